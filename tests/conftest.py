"""Shared fixtures: a real redis-server per test session, and stores on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis import Redis

from server.store import MemoryStore, Store, open_store
from tests.support.procs import (
    RedisCluster,
    RedisProcess,
    RedisSentinel,
    start_cluster,
    start_redis,
    start_sentinel,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The session's redis-server, emptied for this test."""
    with Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


class FakeClock:
    """An injected clock: tests move time instead of sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    sentinel = start_sentinel()
    yield sentinel
    sentinel.stop()


def _flush(ports: list[int]) -> None:
    for port in ports:
        with Redis(host="127.0.0.1", port=port) as client:
            client.flushall()


@pytest.fixture
async def stores() -> AsyncIterator[Callable[[str], Store]]:
    """``open_store`` for this test; every store it opened is closed at teardown."""
    opened: list[Store] = []

    def opener(url: str) -> Store:
        store = open_store(url)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.aclose()


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The same suite runs on the embedded store, a real redis-server, a 3-master Redis Cluster
    and a Sentinel-managed master (all started from the same redis-server binary)."""
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "redis":
        opened = open_store(request.getfixturevalue("redis_url"))
    elif request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        _flush([n.port for n in cluster.nodes])
        opened = open_store(cluster.url)
    else:
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        _flush([sentinel.master.port])
        opened = open_store(sentinel.url)
    yield opened
    await opened.aclose()
