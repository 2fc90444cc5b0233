"""The store's inspection operations (issue 10) on every backend: clear by family, shared values."""

from __future__ import annotations

from server.core.ratelimit import RateLimit
from server.store import Store
from server.store.base import AgentRecord, Hit

LIMIT = RateLimit(1, 60)


def _agent(agent_id: str) -> AgentRecord:
    return AgentRecord(org_id="acme", agent_id=agent_id, owner="n1/c1", node_id="n1", node_url="http://n1")


async def test_clear_removes_only_the_named_families(store: Store) -> None:
    for n in range(30):  # more than one SCAN step's worth on every shard
        await store.issue_token(f"jti-{n}", 60, [])
    assert (await store.issue_token("first", 60, [Hit("k:x", LIMIT)])).allowed
    assert not (await store.issue_token("second", 60, [Hit("k:x", LIMIT)])).allowed  # 1 a minute
    await store.log_events("_voice/journal", ["a", "b"], 100, 60)
    await store.log_events("_voice/tl/chat-1", ["f"], 100, 60)
    await store.log_events("acme", ["org event"], 100, 60)
    assert await store.claim_agent(_agent("kept"), 60) is None

    gone = await store.clear(["tokens", "journal", "timelines", "rate_limits"])

    assert gone >= 30 + 3
    assert not await store.consume_token("jti-7")
    assert (await store.issue_token("again", 60, [Hit("k:x", LIMIT)])).allowed  # a fresh window
    assert (await store.read_events("_voice/journal", 0, 10)).entries == []
    assert (await store.read_events("_voice/tl/chat-1", 0, 10)).entries == []
    assert len((await store.read_events("acme", 0, 10)).entries) == 1  # not a reset family
    assert await store.get_agent("acme", "kept") is not None
    await store.clear(["agents"])
    assert await store.get_agent("acme", "kept") is None


async def test_a_shared_value_is_set_read_and_deleted(store: Store) -> None:
    assert await store.get_value("_voice/clock") is None
    await store.set_value("_voice/clock", "120.0")
    assert await store.get_value("_voice/clock") == "120.0"
    await store.set_value("_voice/clock", None)
    assert await store.get_value("_voice/clock") is None
