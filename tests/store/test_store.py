"""One suite, two backends: the embedded store and a real redis-server (fixture ``store``)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from redis import Redis as SyncRedis

from server.core.apikeys import ApiKey, KeyKind
from server.core.ratelimit import RateLimit
from server.store import MemoryStore, RedisStore, Store, redis_client
from server.store.base import AgentRecord, Hit
from tests.conftest import FakeClock


def record(owner: str = "node-a/conn-1", agent: str = "florencia", **extra: object) -> AgentRecord:
    values: dict[str, object] = {
        "org_id": "acme",
        "agent_id": agent,
        "owner": owner,
        "node_id": owner.split("/")[0],
        "node_url": "http://127.0.0.1:1",
        "allowed_origins": ("https://*.example.com",),
        "config": {"voice": "x"},
        "channels": {"whatsapp:123": {"type": "whatsapp", "ref": "123", "appSecret": "s"}},
        "registered_at": 1.0,
    }
    values.update(extra)
    return AgentRecord(**values)  # type: ignore[arg-type]


# -- tokens -------------------------------------------------------------------------------------
async def test_an_issued_token_is_consumed_once(store: Store) -> None:
    assert (await store.issue_token("jti-1", 60, [])).allowed
    assert await store.consume_token("jti-1") is True
    assert await store.consume_token("jti-1") is False


async def test_an_unknown_token_is_not_consumed(store: Store) -> None:
    assert await store.consume_token("never-issued") is False


async def test_exactly_one_of_many_concurrent_consumes_wins(store: Store) -> None:
    """≥ 200 concurrent consumes of one token: exactly one success (STYLE §4)."""
    await store.issue_token("raced", 60, [])
    results = await asyncio.gather(*(store.consume_token("raced") for _ in range(250)))
    assert results.count(True) == 1


async def test_concurrent_consumes_across_many_tokens(store: Store) -> None:
    ids = [f"t{i}" for i in range(100)]
    for jti in ids:
        await store.issue_token(jti, 60, [])
    results = await asyncio.gather(*(store.consume_token(j) for j in ids for _ in range(3)))
    assert results.count(True) == 100


def test_a_memory_token_expires_with_its_clock() -> None:
    now = [0.0]
    memory = MemoryStore(clock=lambda: now[0])

    async def scenario() -> tuple[bool, bool]:
        await memory.issue_token("short", 10, [])
        await memory.issue_token("long", 100, [])
        now[0] = 10.0
        return await memory.consume_token("short"), await memory.consume_token("long")

    assert asyncio.run(scenario()) == (False, True)


async def test_a_redis_token_carries_its_ttl(redis_url: str) -> None:
    client = redis_client(redis_url)
    store = RedisStore(client, redis_url)
    await store.issue_token("ttl", 63, [])
    pttl = await client.pttl("vs:tok:ttl")
    await store.aclose()
    assert 60_000 < pttl <= 63_000


async def test_rate_limited_issue_stores_no_token(store: Store) -> None:
    limit = RateLimit(2, 60)
    hits = [Hit("k:key_1", limit)]
    assert (await store.issue_token("a", 60, hits)).allowed
    assert (await store.issue_token("b", 60, hits)).allowed
    refused = await store.issue_token("c", 60, hits)
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 60
    assert await store.consume_token("c") is False
    assert await store.consume_token("a") is True


async def test_limits_are_per_bucket(store: Store) -> None:
    limit = RateLimit(1, 60)
    assert (await store.hit([Hit("one", limit)])).allowed
    assert (await store.hit([Hit("two", limit)])).allowed
    assert not (await store.hit([Hit("one", limit)])).allowed


async def test_the_first_refusing_bucket_decides(store: Store) -> None:
    tight, loose = RateLimit(1, 60), RateLimit(100, 1)
    await store.hit([Hit("tight", tight)])
    verdict = await store.hit([Hit("loose", loose), Hit("tight", tight)])
    assert not verdict.allowed
    assert verdict.retry_after > 1


async def test_disabled_limits_are_not_counted(store: Store) -> None:
    off = RateLimit(0, 1)
    for _ in range(50):
        assert (await store.hit([Hit("off", off)])).allowed


async def test_concurrent_hits_are_counted_exactly(store: Store) -> None:
    limit = RateLimit(50, 60)
    verdicts = await asyncio.gather(*(store.hit([Hit("burst", limit)]) for _ in range(120)))
    assert sum(v.allowed for v in verdicts) == 50


# -- keys ---------------------------------------------------------------------------------------
async def test_keys_by_digest_list_touch_revoke(store: Store) -> None:
    key = ApiKey("key_1", "acme", KeyKind.SECRET, 10.0, label="ci")
    await store.put_key(key, "d1")
    assert await store.key_by_digest("d1") == key
    assert await store.key_by_digest("d2") is None
    await store.touch_key("key_1", 20.0)
    touched = await store.key_by_digest("d1")
    assert touched is not None and touched.last_used_at == 20.0
    revoked = await store.revoke_key("key_1", 30.0)
    assert revoked is not None and revoked.revoked_at == 30.0 and not revoked.active_at(30.0)
    again = await store.revoke_key("key_1", 40.0)
    assert again is not None and again.revoked_at == 30.0
    assert await store.revoke_key("key_missing", 1.0) is None
    assert [k.key_id for k in await store.list_keys()] == ["key_1"]


async def test_a_revoke_only_ever_moves_the_end_earlier(store: Store) -> None:
    """A rotation revokes for a later time (its grace); a revoke during the grace ends it now."""
    await store.put_key(ApiKey("key_r", "acme", KeyKind.SECRET, 1.0), "dr")
    graced = await store.revoke_key("key_r", 100.0)
    assert graced is not None and graced.revoked_at == 100.0 and graced.active_at(99.0)
    assert not graced.active_at(100.0)
    now = await store.revoke_key("key_r", 50.0)
    assert now is not None and now.revoked_at == 50.0
    later = await store.revoke_key("key_r", 70.0)
    assert later is not None and later.revoked_at == 50.0


async def test_a_revoke_is_never_undone_by_a_racing_last_used_write(store: Store) -> None:
    """Issue 15: "last used" writes racing a revoke (forced: many at once, around it) leave the
    key revoked every time, and keep its other fields; a deleted key is never revived."""
    for round_ in range(40):
        key_id = f"key_race_{round_}"
        await store.put_key(ApiKey(key_id, "acme", KeyKind.SECRET, 10.0, label="racy"), f"race{round_}")
        touches = [store.touch_key(key_id, 20.0 + i) for i in range(10)]
        await asyncio.gather(*touches[:5], store.revoke_key(key_id, 30.0), *touches[5:])
        after = await store.key_by_digest(f"race{round_}")
        assert after is not None and after.revoked_at == 30.0 and not after.active_at(30.0), round_
        assert (after.org_id, after.label, after.kind, after.created_at) == (
            "acme",
            "racy",
            KeyKind.SECRET,
            10.0,
        )
    await store.touch_key("key_never_stored", 1.0)
    assert all(k.key_id != "key_never_stored" for k in await store.list_keys())


# -- agents -------------------------------------------------------------------------------------
async def test_claiming_an_agent_is_exclusive(store: Store) -> None:
    first, second = record("node-a/c1"), record("node-b/c2")
    assert await store.claim_agent(first, 10) is None
    assert await store.claim_agent(second, 10) == "node-a/c1"
    assert await store.claim_agent(first, 10) is None  # the holder may update
    assert await store.get_agent("acme", "florencia") == first


async def test_a_stale_holder_can_be_replaced_by_name(store: Store) -> None:
    await store.claim_agent(record("node-a/boot1/c1"), 10)
    assert await store.claim_agent(record("node-a/boot2/c9"), 10, replace="node-b/x/y") == "node-a/boot1/c1"
    assert await store.claim_agent(record("node-a/boot2/c9"), 10, replace="node-a/boot1/c1") is None
    current = await store.get_agent("acme", "florencia")
    assert current is not None and current.owner == "node-a/boot2/c9"


async def test_only_the_holder_releases_or_refreshes(store: Store) -> None:
    first = record("node-a/c1")
    await store.claim_agent(first, 10)
    await store.release_agent("acme", "florencia", "node-b/c2")
    assert await store.get_agent("acme", "florencia") is not None
    assert await store.refresh_agent(record("node-b/c2"), 10) is False
    assert await store.refresh_agent(first, 10) is True
    await store.release_agent("acme", "florencia", "node-a/c1")
    assert await store.get_agent("acme", "florencia") is None
    assert await store.claim_agent(record("node-b/c2"), 10) is None


async def test_an_agent_without_heartbeat_goes_offline(store: Store) -> None:
    await store.claim_agent(record(), 0.1)
    await _until_gone(lambda: store.get_agent("acme", "florencia"))


async def test_agents_are_per_org(store: Store) -> None:
    await store.claim_agent(record("n/1"), 10)
    other = record("n/2", org_id="globex")
    assert await store.claim_agent(other, 10) is None
    assert (await store.get_agent("globex", "florencia")) == other


async def test_record_round_trips_through_json() -> None:
    original = record()
    assert AgentRecord.from_json(original.to_json()) == original


async def test_names_point_at_one_value(store: Store) -> None:
    assert await store.claim_name("pub:x", "acme/x", 10) is None
    assert await store.claim_name("pub:x", "acme/x", 10) is None
    assert await store.claim_name("pub:x", "globex/x", 10) == "acme/x"
    assert await store.lookup_name("pub:x") == "acme/x"
    await store.release_name("pub:x", "globex/x")
    assert await store.lookup_name("pub:x") == "acme/x"
    await store.release_name("pub:x", "acme/x")
    assert await store.lookup_name("pub:x") is None


async def _mixed_agents(store: Store) -> tuple[list[AgentRecord], list[bool]]:
    """30 agents claimed by node-a: a third still held, a third taken over by node-b since,
    a third released (gone); spread over every shard of a cluster."""
    ours = [record("node-a/c1", agent=f"bot-{i}") for i in range(30)]
    for mine in ours:
        assert await store.claim_agent(mine, 10) is None
    for i, mine in enumerate(ours):
        if i % 3:
            await store.release_agent("acme", mine.agent_id, "node-a/c1")
        if i % 3 == 1:
            assert await store.claim_agent(record("node-b/c2", agent=mine.agent_id), 10) is None
    return ours, [i % 3 == 0 for i in range(30)]


async def test_a_batch_refresh_extends_only_the_agents_still_held(store: Store) -> None:
    ours, held = await _mixed_agents(store)
    assert await store.refresh_agents(ours, 10) == held
    for i, mine in enumerate(ours):
        current = await store.get_agent("acme", mine.agent_id)
        expected = {0: "node-a/c1", 1: "node-b/c2", 2: None}[i % 3]
        assert (current and current.owner) == expected, mine.agent_id  # nothing taken or revived
    assert await store.refresh_agents([], 10) == []


async def test_a_batch_claim_takes_free_agents_and_names_the_other_holders(store: Store) -> None:
    ours, _ = await _mixed_agents(store)
    holders = await store.claim_agents(ours, 10)
    assert holders == [{1: "node-b/c2"}.get(i % 3) for i in range(30)]
    for i, mine in enumerate(ours):
        current = await store.get_agent("acme", mine.agent_id)
        assert current == (record("node-b/c2", agent=mine.agent_id) if i % 3 == 1 else mine)
    assert await store.claim_agents([], 10) == []


async def test_a_batch_of_name_claims_names_the_other_holders(store: Store) -> None:
    for i in range(0, 30, 2):
        assert await store.claim_name(f"ch:whatsapp:{i}", "globex/other", 10) is None
    claims = [(f"ch:whatsapp:{i}", f"acme/bot-{i}") for i in range(30)]
    assert await store.claim_names(claims, 10) == ["globex/other" if i % 2 == 0 else None for i in range(30)]
    assert await store.claim_names(claims[1:2], 10) == [None]  # the holder claims again
    for i in range(30):
        assert await store.lookup_name(f"ch:whatsapp:{i}") == (
            "globex/other" if i % 2 == 0 else f"acme/bot-{i}"
        )
    assert await store.claim_names([], 10) == []


def test_a_memory_batch_refresh_moves_the_expiry(clock: FakeClock) -> None:
    memory = MemoryStore(clock=clock)
    beating, silent = record(agent="beating"), record(agent="silent")

    async def scenario() -> tuple[AgentRecord | None, AgentRecord | None, str | None]:
        await memory.claim_agents([beating, silent], 10)
        await memory.claim_names([("pub:beating", "acme/beating")], 10)
        clock.advance(8)
        assert await memory.refresh_agents([beating], 10) == [True]
        await memory.claim_names([("pub:beating", "acme/beating")], 10)
        clock.advance(8)
        return (
            await memory.get_agent("acme", "beating"),
            await memory.get_agent("acme", "silent"),
            await memory.lookup_name("pub:beating"),
        )

    assert asyncio.run(scenario()) == (beating, None, "acme/beating")


async def test_redis_batches_set_the_ttl(redis_url: str) -> None:
    client = redis_client(redis_url)
    store = RedisStore(client, redis_url)
    agents = [record(agent=f"bot-{i}") for i in range(3)]
    await store.claim_agents(agents, 5)
    await store.claim_names([("pub:bot-0", "acme/bot-0")], 5)
    assert await store.refresh_agents(agents, 63) == [True] * 3
    await store.claim_names([("pub:bot-0", "acme/bot-0")], 63)
    ttls = [await client.pttl(f"vs:ag:acme/bot-{i}") for i in range(3)] + [
        await client.pttl("vs:ix:pub:bot-0")
    ]
    await store.aclose()
    assert all(60_000 < ttl <= 63_000 for ttl in ttls), ttls


async def test_batches_survive_an_emptied_script_cache(store: Store, request: pytest.FixtureRequest) -> None:
    """After a restart or failover Redis has no cached scripts (NOSCRIPT): a batch sends their text."""
    backend = request.node.callspec.params["store"]
    if backend == "memory":
        pytest.skip("no script cache")
    ours, held = await _mixed_agents(store)
    for port in _ports(request, backend):
        with SyncRedis(host="127.0.0.1", port=port) as client:
            client.script_flush()
    assert await store.refresh_agents(ours, 10) == held
    assert await store.claim_names([("pub:bot-1", "acme/bot-1")], 10) == [None]
    assert await store.claim_agents(ours[:1], 10) == [None]


def _ports(request: pytest.FixtureRequest, backend: str) -> list[int]:
    if backend == "cluster":
        return [node.port for node in request.getfixturevalue("redis_cluster").nodes]
    if backend == "sentinel":
        return [request.getfixturevalue("redis_sentinel").master.port]
    return [request.getfixturevalue("redis_server").port]


# -- messages and bus ---------------------------------------------------------------------------
async def test_first_time_dedupes(store: Store) -> None:
    assert await store.first_time("wamid.1", 60) is True
    assert await store.first_time("wamid.1", 60) is False
    assert await store.first_time("wamid.2", 60) is True


async def test_bounded_lists(store: Store) -> None:
    for i in range(5):
        await store.append("thread", f"m{i}", max_items=3, ttl=60)
    assert await store.read_list("thread") == ["m2", "m3", "m4"]
    assert await store.pop_list("thread") == ["m2", "m3", "m4"]
    assert await store.read_list("thread") == []


async def test_lists_are_bounded_in_bytes_oldest_first(store: Store) -> None:
    counts = [await store.append("bytes", "é" * 10, max_items=100, ttl=60, max_bytes=50) for _ in range(4)]
    assert counts == [1, 2, 2, 2]  # 20 bytes each: two fit in 50
    assert await store.read_list("bytes") == ["é" * 10] * 2
    assert await store.append("bytes", "x" * 80, max_items=100, ttl=60, max_bytes=50) == 1
    assert await store.read_list("bytes") == ["x" * 80], "the newest item always stays"


async def test_an_index_keeps_the_most_recently_written_members(store: Store) -> None:
    assert [await store.touch_index("agent", f"t{i}", cap=3, ttl=60) for i in range(3)] == [[], [], []]
    assert await store.touch_index("agent", "t0", cap=3, ttl=60) == []  # t0 written again: newest
    assert await store.touch_index("agent", "t3", cap=3, ttl=60) == ["t1"]
    assert await store.touch_index("agent", "t4", cap=3, ttl=60) == ["t2"]
    assert await store.touch_index("agent", "t5", cap=1, ttl=60) == ["t0", "t3", "t4"]
    assert await store.touch_index("other", "t5", cap=1, ttl=60) == [], "indexes are separate"


async def test_an_index_lists_its_members_oldest_first(store: Store) -> None:
    """``index_members`` reads what ``touch_index``/``touch_indexes`` wrote (the per-org list of
    online agents, server/services/agents.py); the batch is the single touch once per item."""
    assert await store.index_members("org:acme", ttl=60) == []
    touches = [("org:acme", "a", 10), ("org:acme", "b", 10), ("org:x", "c", 10)]
    assert await store.touch_indexes(touches, 60) == [[], [], []]
    assert await store.touch_indexes([("org:acme", "a", 2), ("org:acme", "d", 2)], 60) == [[], ["b"]]
    assert await store.index_members("org:acme", ttl=60) == ["a", "d"]
    assert await store.index_members("org:x", ttl=60) == ["c"]
    assert await store.touch_indexes([], 60) == []


def test_a_memory_index_forgets_members_not_written_within_the_ttl(clock: FakeClock) -> None:
    memory = MemoryStore(clock=clock)

    async def run() -> None:
        await memory.touch_index("org:acme", "old", cap=10, ttl=60)
        clock.advance(40)
        await memory.touch_index("org:acme", "new", cap=10, ttl=60)
        clock.advance(30)
        assert await memory.index_members("org:acme", ttl=60) == ["new"]
        assert await memory.index_members("org:acme", ttl=20) == []

    asyncio.run(run())


async def test_a_redis_index_forgets_members_not_written_within_the_ttl(redis_url: str) -> None:
    """Redis scores by its own clock (TIME); a member 0.3 s old is outside a 0.2 s window."""
    store = RedisStore(redis_client(redis_url))
    try:
        await store.touch_index("org:acme", "old", cap=10, ttl=60)
        await asyncio.sleep(0.3)
        await store.touch_index("org:acme", "new", cap=10, ttl=60)
        assert await store.index_members("org:acme", ttl=0.2) == ["new"]
        assert await store.index_members("org:acme", ttl=60) == ["old", "new"]
    finally:
        await store.aclose()


async def test_publish_reaches_a_subscriber(store: Store) -> None:
    received: list[str] = []
    ready = asyncio.Event()

    async def listen() -> None:
        iterator = store.subscribe("chan")
        task = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.05)
        ready.set()
        received.append(await task)
        await iterator.aclose()  # type: ignore[attr-defined]

    listener = asyncio.create_task(listen())
    await ready.wait()
    for _ in range(100):
        if await store.publish("chan", "hello") >= 1:
            break
        await asyncio.sleep(0.02)
    await asyncio.wait_for(listener, 5)
    assert received == ["hello"]


async def test_ping(store: Store) -> None:
    assert await store.ping() >= 0


def test_memory_store_sweeps_expired_entries() -> None:
    now = [0.0]
    memory = MemoryStore(clock=lambda: now[0])

    async def fill() -> None:
        for i in range(2000):
            await memory.issue_token(f"t{i}", 1, [])

    asyncio.run(fill())
    now[0] = 5.0
    assert len(memory) == 0


async def _until_gone(read: object) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if await read() is None:  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("still there after 5 s")


async def test_concurrent_mints_are_judged_as_if_issued_one_by_one(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """Mints issued together (coalesced into one script call on a single Redis node) get exactly
    the verdicts of the same mints issued one after another: each bucket counts every mint, and
    a token is written only when all its buckets are within their limits. A cluster counts each
    bucket on its own shard, in arrival order there: no bucket ever allows more than its limit."""
    limits = {"k:a": RateLimit(3, 60), "k:b": RateLimit(5, 60), "o:c": RateLimit(100, 60)}
    chooser = random.Random(6)
    plans = [chooser.sample(sorted(limits), chooser.randint(0, 3)) for _ in range(40)]
    verdicts = await asyncio.gather(
        *(store.issue_token(f"co-{i}", 60, [Hit(k, limits[k]) for k in plan]) for i, plan in enumerate(plans))
    )
    counts = dict.fromkeys(limits, 0)
    allowed = dict.fromkeys(limits, 0)
    for i, (plan, verdict) in enumerate(zip(plans, verdicts, strict=True)):
        for key in plan:
            counts[key] += 1
            allowed[key] += verdict.allowed
        if request.node.callspec.params["store"] != "cluster":
            assert verdict.allowed is all(counts[k] <= limits[k].count for k in plan), (i, plan, verdict)
        assert verdict.allowed or 1 <= verdict.retry_after <= 60
        assert await store.consume_token(f"co-{i}") is verdict.allowed, (i, plan)
    assert all(allowed[k] <= limits[k].count for k in limits), allowed
    assert sum(v.allowed for v in verdicts) < len(plans)  # the limits did bite


# -- event logs (WS /ws/stream) ------------------------------------------------------------------
async def test_an_event_log_numbers_entries_in_order_and_reads_after_a_cursor(store: Store) -> None:
    assert await store.log_events("org-a", ["a", "b"], 10, 60) == [1, 2]
    assert await store.log_events("org-a", ["c"], 10, 60) == [3]
    assert await store.log_events("org-b", ["x"], 10, 60) == [1]  # one numbering per log
    page = await store.read_events("org-a", 1, 100)
    assert page.entries == [(2, "b"), (3, "c")]
    assert (page.first, page.last) == (1, 3)
    assert (await store.read_events("org-a", 0, 2)).entries == [(1, "a"), (2, "b")]
    assert (await store.read_events("org-a", 3, 100)).entries == []


async def test_an_event_log_keeps_the_newest_and_never_gives_a_number_twice(store: Store) -> None:
    await store.log_events("org-a", [f"e{i}" for i in range(8)], 3, 60)
    page = await store.read_events("org-a", 0, 100)
    assert page.entries == [(6, "e5"), (7, "e6"), (8, "e7")]
    assert (page.first, page.last) == (6, 8)
    assert await store.log_events("org-a", ["next"], 3, 60) == [9]


async def test_reading_an_empty_or_unknown_log(store: Store) -> None:
    page = await store.read_events("nobody", 0, 10)
    assert page == ([], 0, 0)
    await store.log_events("org-a", ["a"], 5, 60)
    page = await store.read_events("org-a", 0, 0)
    assert page == ([], 1, 1)  # limit 0: only the bounds


async def test_concurrent_appends_to_one_log_get_distinct_consecutive_numbers(store: Store) -> None:
    results = await asyncio.gather(*(store.log_events("org-a", [f"e{i}"], 1000, 60) for i in range(200)))
    numbers = sorted(n for batch in results for n in batch)
    assert numbers == list(range(1, 201))
    page = await store.read_events("org-a", 0, 1000)
    assert [n for n, _ in page.entries] == list(range(1, 201))
