"""Choose the store once, from ``VOICE_STORE_URL``."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from server.store.base import Store
from server.store.memory import MemoryStore
from server.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "open_store", "redis_client"]

# Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
SOCKET_TIMEOUT = 2.0


def redis_client(url: str) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=15,
    )


def open_store(url: str) -> Store:
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(redis_client(url), url)
    raise ValueError(f"unsupported store URL scheme: {url.split('://')[0]}")
