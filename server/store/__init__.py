"""Choose the store once, from ``VOICE_STORE_URL``."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from server.store.base import Store
from server.store.memory import MemoryStore
from server.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "open_store", "redis_client"]

# Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
SOCKET_TIMEOUT = 2.0


MAX_CONNECTIONS = 64


def redis_client(url: str) -> Redis:
    # A blocking pool: a burst beyond MAX_CONNECTIONS waits for a free connection (up to the
    # socket timeout) instead of failing; a plain pool raises MaxConnectionsError.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=15,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def open_store(url: str) -> Store:
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(redis_client(url), url)
    raise ValueError(f"unsupported store URL scheme: {url.split('://')[0]}")
