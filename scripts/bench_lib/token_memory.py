"""Redis bytes per outstanding token, on a redis-server of its own (nothing else in it).

Tokens are written by our store's own ``RedisStore.issue_token`` with the TTL and rate-limit
hit a real mint uses, so the keys (``vs:tok:<jti>``), values and expiries are exactly the
server's. Two figures at each size: the mean ``MEMORY USAGE`` of a sample of token keys (key,
value and the main dict entry) and the growth of ``INFO memory`` ``used_memory`` divided by the
number of tokens (adds the expires-dict entry and the hash tables' growth, so it is the honest
figure for capacity planning).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.asyncio import Redis

from scripts.bench_lib.results import MemoryPoint
from server.core.ratelimit import parse_rate
from server.core.tokens import JtiSource
from server.services.authority import STORE_GRACE_SECONDS
from server.store import MAX_CONNECTIONS, RedisStore, redis_client
from server.store.base import Hit

TOKEN_TTL = 60.0  # VOICE_TOKEN_TTL's default
SAMPLE = 200
BATCH = 512


async def _used_memory(client: Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def _sample_usage(client: Redis) -> tuple[float, int]:
    keys: list[str] = []
    async for key in client.scan_iter(match="vs:tok:*", count=1000):
        keys.append(str(key))
        if len(keys) >= SAMPLE:
            break
    sizes = [int(await client.memory_usage(key) or 0) for key in keys]
    return (sum(sizes) / len(sizes) if sizes else float("nan")), len(sizes)


async def measure(url: str, sizes: Sequence[int], budget: float) -> list[MemoryPoint]:
    """Grow the outstanding tokens to each of ``sizes`` in turn and measure."""
    client = redis_client(url)
    store = RedisStore(client, url)
    hits = [Hit("k:bench-memory", parse_rate("1000000/second"))]
    ttl = TOKEN_TTL + STORE_GRACE_SECONDS
    points: list[MemoryPoint] = []
    new_jti = JtiSource()
    try:
        # Open every pooled connection and create the rate-limit counter before the baseline:
        # each client connection costs Redis ~20 KB of buffers, which is not per-token memory.
        await asyncio.gather(*(client.ping() for _ in range(MAX_CONNECTIONS)))
        await store.issue_token(new_jti(), ttl, hits)
        await client.delete(*[k async for k in client.scan_iter(match="vs:tok:*")])
        baseline = await _used_memory(client)
        issued = 0

        async def issue_up_to(target: int) -> None:
            nonlocal issued
            while issued < target:
                batch = min(BATCH, target - issued)
                await asyncio.gather(*(store.issue_token(new_jti(), ttl, hits) for _ in range(batch)))
                issued += batch

        async def grow() -> None:
            for size in sorted(sizes):
                await issue_up_to(size)
                used = await _used_memory(client)
                usage, sampled = await _sample_usage(client)
                points.append(MemoryPoint(size, usage, sampled, (used - baseline) / size))

        await asyncio.wait_for(grow(), budget)
    finally:
        await store.aclose()
    return points
