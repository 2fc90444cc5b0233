"""Choose the store once, from ``VOICE_STORE_URL``.

==========================================================  ===================================
``memory://``                                               embedded, one process (default)
``redis://[[user]:password@]host:port[/db]``                standalone Redis
``rediss://...``                                            standalone Redis over TLS
``unix:///path/to/redis.sock[?db=N]``                       standalone Redis on a Unix socket
``redis+sentinel://[:password@]h1:p1[,h2:p2...]/service[/db]``  Sentinel: the current master of ``service``
``redis+cluster://[:password@]h1:p1[,h2:p2...]``            Redis Cluster (any reachable nodes)
==========================================================  ===================================
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from server.core.redaction import masked_url
from server.core.text import is_ascii_number
from server.store.base import Store
from server.store.memory import MemoryStore
from server.store.redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "masked_url", "open_store", "redis_client"]

# Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
SOCKET_TIMEOUT = 2.0
MAX_CONNECTIONS = 64


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2)


def _options() -> dict[str, Any]:
    """Connection options every client form shares: decoded replies, short timeouts, retries."""
    return {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
        "retry": _retry(),
    }


def redis_client(url: str) -> Redis:
    # A blocking pool: a burst beyond MAX_CONNECTIONS waits for a free connection (up to the
    # socket timeout) instead of failing; a plain pool raises MaxConnectionsError.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT,
        health_check_interval=15,
        **_options(),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def _hosts(netloc: str) -> tuple[str | None, list[tuple[str, int]]]:
    """``[:password@]h1:p1,h2:p2`` → (password, [(host, port)...])."""
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not is_ascii_number(port):
            raise ValueError(f"expected host:port in the store URL, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return password, hosts


def sentinel_client(url: str) -> tuple[Redis, list[Redis], str]:
    """The master's client, the Sentinel connections (closed with it), and the service name."""
    parts = urlsplit(url)
    password, hosts = _hosts(parts.netloc)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel:// URL names the service: redis+sentinel://host:port/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = cast(Any, Sentinel)(  # untyped before redis-py 8.2, typed since
        hosts,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            **({"password": password} if password else {}),
        },
    )
    master: Redis = sentinel.master_for(
        path[0],
        db=db,
        password=password,
        max_connections=MAX_CONNECTIONS,
        **_options(),
    )
    return master, list(sentinel.sentinels), path[0]


def cluster_client(url: str) -> RedisCluster:
    password, hosts = _hosts(urlsplit(url).netloc)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in hosts],
        password=password,
        **_options(),
    )


def open_store(url: str) -> Store:
    if url.startswith("memory://"):
        return MemoryStore(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(redis_client(url), url)
    if url.startswith("redis+sentinel://"):
        master, sentinels, service = sentinel_client(url)
        return RedisStore(master, url, sentinels=sentinels, service=service)
    if url.startswith("redis+cluster://"):
        password, hosts = _hosts(urlsplit(url).netloc)
        bus = Redis(
            host=hosts[0][0],
            port=hosts[0][1],
            password=password,
            decode_responses=True,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        return RedisStore(cluster_client(url), url, bus=bus)
    raise ValueError(f"unsupported store URL scheme: {url.split('://')[0]}")
