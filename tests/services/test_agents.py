"""The registry's heartbeat with thousands of agents (issue 15 Medium 8): batched store calls, a
real redis-server behind a proxy that adds a 3 ms round trip and counts them."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from server.errors import AgentNotOnline, StoreUnavailable
from server.services.agents import HEARTBEAT_BATCH, LISTING_EVERY, AgentRegistry, RegistrySettings
from server.store import MemoryStore, open_store
from server.store.base import AgentRecord
from tests.conftest import FakeClock
from tests.support.latency import LatencyProxy

AGENTS = 3000
TTL = 10.0


class FakeConnection:
    """An agent's /client socket."""

    def __init__(self, org_id: str = "acme") -> None:
        self.org_id = org_id
        self.conn_id = "conn_" + secrets.token_hex(4)

    async def send(self, frame: Mapping[str, Any]) -> None:
        return None


async def _register(registry: AgentRegistry, count: int) -> list[FakeConnection]:
    """``count`` agents, one socket each: every third public (a ``pub:`` index), every fifth with
    a WhatsApp number (a ``ch:`` index), registered 100 at a time."""
    connections = [FakeConnection() for _ in range(count)]

    async def one(i: int) -> None:
        origins = ["https://*.example.com"] if i % 3 == 0 else None
        await registry.register(connections[i], f"bot-{i}", {"voice": "x"}, origins)
        if i % 5 == 0:
            frame = {"event": "channel.add", "agent_id": f"bot-{i}", "type": "whatsapp", "ref": f"pn-{i}"}
            await registry.add_channel(connections[i], f"bot-{i}", frame)

    for start in range(0, count, 100):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
    return connections


def _keys(records: Sequence[AgentRecord]) -> list[str]:
    keys = []
    for record in records:
        keys.append(f"vs:ag:{record.org_id}/{record.agent_id}")
        if record.allowed_origins:
            keys.append(f"vs:ix:pub:{record.agent_id}")
        keys += [f"vs:ix:ch:{c['type']}:{c['ref']}" for c in record.channels.values()]
    return keys


async def _ttls(redis: Redis, keys: Sequence[str]) -> list[int]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
        return [int(ttl) for ttl in await pipe.execute()]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A direct connection (around the proxy) to look at and damage what the registry wrote."""
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[LatencyProxy]:
    async with LatencyProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0])) as running:
        yield running


async def test_a_beat_for_3000_agents_takes_a_few_round_trips(proxy: LatencyProxy, redis: Redis) -> None:
    """One beat refreshes 3,000 agents and their 1,600 indexes, and claims again the ones Redis
    lost, in O(agents / HEARTBEAT_BATCH) round trips (it was at least one per agent and index)."""
    store = open_store(proxy.url)
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", TTL))
    try:
        await _register(registry, AGENTS)
        records = registry.local_agents()
        keys = _keys(records)
        assert len(keys) == AGENTS + AGENTS // 3 + AGENTS // 5
        # Every key about to expire, and a few agents and indexes gone (evicted, or a restart).
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pexpire(key, 3000)
            await pipe.execute()
        lost = [f"vs:ag:acme/bot-{i}" for i in range(7, AGENTS, 97)]
        await redis.delete(*lost, "vs:ix:pub:bot-3", "vs:ix:ch:whatsapp:pn-10")
        proxy.delay, proxy.round_trips = 0.003, 0

        await registry.heartbeat()

        batches = math.ceil(AGENTS / HEARTBEAT_BATCH)
        # Per batch: refresh, claim the lost again, claim the indexes (<= 500 per call).
        assert proxy.round_trips <= 3 * batches + 2, proxy.round_trips
        # Every LISTING_EVERY-th beat also writes the listing indexes (agents:<org>,
        # agent-orgs:<id>): one more per batch.
        for _ in range(LISTING_EVERY - 1):
            proxy.round_trips = 0
            await registry.heartbeat()
        assert proxy.round_trips <= 4 * batches + 2, proxy.round_trips
        assert len(await store.index_members("agents:acme", 3600)) == AGENTS
        ttls = await _ttls(redis, keys)
        assert all(ttl > 3000 for ttl in ttls), sorted(ttls)[:5]  # extended, none missing (-2)
        by_id = {record.agent_id: record for record in records}
        for i in range(7, AGENTS, 97):
            assert await store.get_agent("acme", f"bot-{i}") == by_id[f"bot-{i}"]
    finally:
        proxy.delay = 0  # stop() releases agent by agent
        await registry.stop()
        await store.aclose()


async def test_3000_agents_stay_online_over_several_ttls(proxy: LatencyProxy, redis: Redis) -> None:
    """With a 3 ms round trip and a 3 s TTL (a beat every second), every agent is still online
    after two TTLs: the issue saw two thirds offline."""
    store = open_store(proxy.url)
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 3.0))
    try:
        await registry.start()
        await _register(registry, AGENTS)
        proxy.delay = 0.003
        await asyncio.sleep(6.0)
        ttls = await _ttls(redis, _keys(registry.local_agents()))
        assert sum(ttl < 0 for ttl in ttls) == 0, f"{sum(ttl < 0 for ttl in ttls)} of {len(ttls)} gone"
    finally:
        proxy.delay = 0  # stop() releases agent by agent
        await registry.stop()
        await store.aclose()


class RefusingStore(MemoryStore):
    """The embedded store, refusing chosen refresh batches as a store that is down would."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.refuse: set[int] = set()  # which refresh calls fail, counted from 1
        self.calls = 0

    async def refresh_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[bool]:
        self.calls += 1
        if self.calls in self.refuse:
            raise StoreUnavailable("the token store is unavailable (ConnectionError)")
        return await super().refresh_agents(records, ttl)


async def test_a_refused_batch_is_retried_next_beat_and_the_others_still_beat(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusingStore(clock)
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", TTL), clock=clock)
    await _register(registry, 3 * HEARTBEAT_BATCH)
    records = registry.local_agents()
    batches = [records[i : i + HEARTBEAT_BATCH] for i in range(0, len(records), HEARTBEAT_BATCH)]

    async def online(batch: list[AgentRecord]) -> int:
        return sum([await store.get_agent(r.org_id, r.agent_id) is not None for r in batch])

    clock.advance(6)
    store.refuse = {2}
    with caplog.at_level(logging.WARNING, logger="voice.agents"):
        await registry.heartbeat()
    assert [r.message for r in caplog.records if "failed" in r.message] == [
        f"heartbeat for {HEARTBEAT_BATCH} agents (bot-{HEARTBEAT_BATCH}, ...) failed: "
        "the token store is unavailable (ConnectionError)"
    ]
    clock.advance(6)  # past the registration's TTL, not the first beat's
    assert [await online(batch) for batch in batches] == [HEARTBEAT_BATCH, 0, HEARTBEAT_BATCH]
    await registry.heartbeat()  # the refused batch was lost meanwhile: claimed again
    assert [await online(batch) for batch in batches] == [HEARTBEAT_BATCH] * 3
    assert await store.lookup_name(f"pub:bot-{HEARTBEAT_BATCH + 1}") == f"acme/bot-{HEARTBEAT_BATCH + 1}"
    await registry.stop()
    await store.aclose()


class SwallowingStore(MemoryStore):
    """The embedded store, whose first refresh returns when cancelled instead of raising, as a
    redis-py write does on Python 3.11 when the cancel lands as ``asyncio.wait_for`` completes."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshing = asyncio.Event()
        self.swallowed = False

    async def refresh_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[bool]:
        self.refreshing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed = True
        return await super().refresh_agents(records, ttl)


async def test_stop_returns_when_the_store_swallows_the_cancel() -> None:
    store = SwallowingStore()
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 0.03))
    await _register(registry, 1)
    await registry.start()
    await store.refreshing.wait()
    stopping = asyncio.create_task(registry.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert stopping in done, "stop() waits for a beat that went on to its next refresh"
    assert store.swallowed
    await store.aclose()


async def test_an_orgs_list_and_an_ids_orgs_follow_registrations_across_beats(clock: FakeClock) -> None:
    """``online_in_org`` lists the org's agents and no other org's; ``online_anywhere`` finds an
    id registered by any org. Both stay right past several heartbeat TTLs (the listing indexes
    are written every LISTING_EVERY-th beat) and drop an agent as soon as it goes offline."""
    store = MemoryStore(clock=clock)
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", TTL), clock=clock)
    acme, acme_too, globex = FakeConnection("acme"), FakeConnection("acme"), FakeConnection("globex")
    await registry.register(acme, "support", {}, None)
    await registry.register(acme_too, "sales", {}, ["https://*.example.com"])
    await registry.register(globex, "support", {}, None)

    async def listed(org_id: str) -> list[str]:
        return [record.agent_id for record in await registry.online_in_org(org_id)]

    assert await listed("acme") == ["sales", "support"]
    assert await listed("globex") == ["support"]
    assert await listed("initech") == []
    for _ in range(4 * LISTING_EVERY):  # four heartbeat TTLs, a beat every TTL/3
        clock.advance(TTL / 3)
        await registry.heartbeat()
    assert await listed("acme") == ["sales", "support"]
    assert await registry.online_anywhere("support") and not await registry.online_anywhere("nobody")

    await registry.disconnect(acme)
    assert await listed("acme") == ["sales"]
    assert await registry.online_anywhere("support"), "globex still has one"
    await registry.disconnect(globex)
    assert not await registry.online_anywhere("support")
    await registry.stop()
    await store.aclose()


async def test_lookups_that_miss_together_share_one_store_read(proxy: LatencyProxy) -> None:
    """50 mints in flight when an agent's record leaves the cache make one read, not 50."""
    store = open_store(proxy.url)
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", TTL))
    try:
        await _register(registry, 1)
        agent_id = registry.local_agents()[0].agent_id
        registry.forget_cached(f"acme/{agent_id}")
        proxy.delay, proxy.round_trips = 0.02, 0
        records = await asyncio.gather(*(registry.find("acme", agent_id) for _ in range(50)))
        assert proxy.round_trips == 1 and {r.agent_id for r in records} == {agent_id}
        proxy.round_trips = 0
        await registry.find("acme", agent_id)  # cached now
        assert proxy.round_trips == 0
        registry.forget_cached(f"acme/{agent_id}")
        with pytest.raises(AgentNotOnline):
            await asyncio.gather(*(registry.find("acme", "nobody") for _ in range(10)))
        assert proxy.round_trips == 1
    finally:
        proxy.delay = 0
        await registry.stop()
        await store.aclose()
