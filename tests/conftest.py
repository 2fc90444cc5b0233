"""Shared fixtures: a real redis-server per test session, and stores on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis

from server.store import MemoryStore, RedisStore, Store, redis_client
from tests.support.procs import RedisProcess, start_redis


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


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The same suite runs on the embedded store and on a real redis-server."""
    if request.param == "memory":
        memory = MemoryStore()
        yield memory
        await memory.aclose()
    else:
        url: str = request.getfixturevalue("redis_url")
        redis_store = RedisStore(redis_client(url), url)
        yield redis_store
        await redis_store.aclose()
