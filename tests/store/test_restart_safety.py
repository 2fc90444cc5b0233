"""Single use across a Redis crash (issue 15 High 2), on real redis-server processes.

A persisted Redis can come back with fewer writes than it acknowledged: an RDB snapshot taken
between a mint and its consume, the last second of an ``appendfsync everysec`` AOF, or a
replica promoted before a consume reached it. Each scenario restores a token that was already
spent, checks that the restored Redis really holds it again (the premise: without the fix this
is a second session), and checks that the node, which stays up through the crash, refuses it
while it still accepts tokens minted after the restart.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.errors import StoreUnavailable
from server.store import Store
from tests.support.procs import RedisProcess, start_redis

Start = Callable[..., RedisProcess]


@pytest.fixture
def redis_factory() -> Iterator[Start]:
    started: list[RedisProcess] = []

    def start(*args: object, **kwargs: object) -> RedisProcess:
        server = start_redis(*args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _crash(server: RedisProcess) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)


async def _holds(port: int, jti: str) -> bool:
    admin = Redis(port=port)
    try:
        return bool(await admin.exists("vs:tok:" + jti))
    finally:
        await admin.aclose()


async def _consume(store: Store, jti: str) -> bool:
    """Consume through a node that lived through the crash: it reconnects by itself."""
    for _ in range(100):
        try:
            return await store.consume_token(jti)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not come back")


async def _issue(store: Store, jti: str) -> None:
    for _ in range(100):
        try:
            assert (await store.issue_token(jti, 60, [])).allowed
            return
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not come back")


async def test_a_token_restored_from_an_rdb_snapshot_is_not_spent_twice(
    redis_factory: Start, stores: Callable[[str], Store]
) -> None:
    redis = redis_factory()
    store = stores(redis.url)
    await _issue(store, "snap")
    admin = Redis(port=redis.port)
    await admin.save()  # the snapshot holds the unspent token
    await admin.aclose()
    assert await store.consume_token("snap") is True
    _crash(redis)
    restarted = redis_factory(port=redis.port, workdir=redis.workdir)
    assert await _holds(restarted.port, "snap"), "the premise: the dump brought the token back"
    assert await _consume(store, "snap") is False
    await _issue(store, "after")
    assert await _consume(store, "after") is True


async def test_a_token_restored_from_the_lost_second_of_an_aof_is_not_spent_twice(
    redis_factory: Start, stores: Callable[[str], Store]
) -> None:
    aof = ["--appendonly", "yes", "--appendfsync", "everysec"]
    redis = redis_factory(extra=aof)
    store = stores(redis.url)
    await _issue(store, "aof")
    await asyncio.sleep(1.5)  # fsynced
    # What reached the disk before the last second: a copy taken between mint and consume,
    # put back after the crash (``kill -9`` alone keeps the page cache; a power cut does not).
    on_disk = Path(redis.workdir) / "appendonlydir"
    fsynced = Path(redis.workdir) / "fsynced"
    shutil.copytree(on_disk, fsynced)
    assert await store.consume_token("aof") is True
    _crash(redis)
    shutil.rmtree(on_disk)
    fsynced.rename(on_disk)
    restarted = redis_factory(port=redis.port, workdir=redis.workdir, extra=aof)
    assert await _holds(restarted.port, "aof"), "the premise: the AOF brought the token back"
    assert await _consume(store, "aof") is False
    await _issue(store, "after")
    assert await _consume(store, "after") is True


async def test_a_token_a_promoted_replica_still_holds_is_not_spent_twice(
    redis_factory: Start, stores: Callable[[str], Store]
) -> None:
    """Replication is asynchronous: a replica promoted before the consume reached it."""
    master = redis_factory()
    replica = redis_factory(extra=["--replicaof", "127.0.0.1", str(master.port)])
    store = stores(master.url)
    await _issue(store, "failover")
    for _ in range(400):  # the first sync is a full one: slow on a loaded machine
        if await _holds(replica.port, "failover"):
            break
        await asyncio.sleep(0.05)
    assert await _holds(replica.port, "failover"), "the replica never synced the token"
    promoted = Redis(port=replica.port)
    await promoted.execute_command("REPLICAOF", "NO", "ONE")  # the consume below never reaches it
    await promoted.aclose()
    assert await store.consume_token("failover") is True
    assert await _holds(replica.port, "failover"), "the premise: the replica still holds it"
    after_failover = stores(replica.url)
    assert await after_failover.consume_token("failover") is False
    await _issue(after_failover, "after")
    assert await after_failover.consume_token("after") is True
