"""Start-up check of Redis ``maxmemory-policy`` (issue 15 High 3), on real redis-servers.

Under memory pressure an ``allkeys-*`` policy can evict an org's API key for good and a
``volatile-*`` one agents and unspent tokens; the store warns at start-up unless the policy is
``noeviction``, and a Redis that refuses ``CONFIG`` (managed services) still starts.
"""

from __future__ import annotations

import logging

import pytest
from redis import Redis

from server.store import open_store
from server.store.redis import RedisStore
from tests.support.procs import RedisCluster, RedisProcess


def _set_policy(port: int, policy: str) -> None:
    with Redis(host="127.0.0.1", port=port) as client:
        client.config_set("maxmemory-policy", policy)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "noeviction"])
async def test_start_warns_unless_noeviction(
    redis_server: RedisProcess, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    _set_policy(redis_server.port, policy)
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    try:
        with caplog.at_level(logging.INFO, logger="voice.store"):
            await store.start()
    finally:
        await store.aclose()
        _set_policy(redis_server.port, "noeviction")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "maxmemory-policy" in r.message]
    if policy == "noeviction":
        assert warnings == []
    else:
        assert len(warnings) == 1 and policy in warnings[0].message


async def test_start_warns_when_any_cluster_node_can_evict(
    redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    last = redis_cluster.nodes[-1].port
    _set_policy(last, "allkeys-lfu")
    store = open_store(redis_cluster.url)
    try:
        with caplog.at_level(logging.INFO, logger="voice.store"):
            await store.start()
    finally:
        await store.aclose()
        _set_policy(last, "noeviction")
    assert any("allkeys-lfu" in r.message and r.levelno == logging.WARNING for r in caplog.records)


async def test_start_survives_a_redis_that_refuses_config(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with Redis(host="127.0.0.1", port=redis_server.port) as admin:
        admin.acl_setuser(
            "app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-config"]
        )
    _set_policy(redis_server.port, "allkeys-lru")
    store = open_store(f"redis://app:pw@127.0.0.1:{redis_server.port}/0")
    try:
        with caplog.at_level(logging.INFO, logger="voice.store"):
            await store.start()
        assert await store.ping() >= 0  # the store is usable
    finally:
        await store.aclose()
        _set_policy(redis_server.port, "noeviction")
        with Redis(host="127.0.0.1", port=redis_server.port) as admin:
            admin.acl_deluser("app")
    assert any("could not read Redis maxmemory-policy" in r.message for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING and "maxmemory-policy" in r.message for r in caplog.records)
