"""The event log behind WS /ws/stream, in one process: order, replay, gaps, filters, slow readers.

The same log across real server processes on a real Redis is tests/e2e/test_stream.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.errors import SlowConsumer
from server.services.events import EventLog, StreamFilter
from server.store import MemoryStore

ALL = StreamFilter("acme", frozenset({"alpha", "beta"}))


async def log_of(store: MemoryStore, retention: int = 100) -> EventLog:
    events = EventLog(store, retention, 60)
    events.publish = store.publish
    return events


async def wired(store: MemoryStore, retention: int = 100) -> tuple[EventLog, asyncio.Task[None]]:
    """An event log with its writer running and the bus wired back into it, as Node.open does."""
    events = await log_of(store, retention)
    events.start()

    async def listen() -> None:
        async for raw in store.subscribe("events"):
            await events.on_bus(json.loads(raw))

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0)
    return events, listener


async def take(frames: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    got = []
    async with asyncio.timeout(5):
        async for frame in frames:
            got.append(frame)
            if len(got) == count:
                return got
    return got


def call_event(name: str, call: str = "c1", **fields: Any) -> dict[str, Any]:
    return {"event": name, "call_id": call, **fields}


async def settle(events: EventLog) -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_live_events_arrive_in_order_with_one_rising_seq_across_agents() -> None:
    store = MemoryStore()
    events, listener = await wired(store)
    with events.subscribe(ALL, 100) as sub:
        frames = sub.frames(None)
        caught_up = await take(frames, 1)
        assert caught_up == [{"event": "log.caught_up", "data": {"seq": 0}}]
        events.record("acme", "alpha", call_event("call.started", session_id="s1"))
        events.record("acme", "beta", call_event("user.message", "c2", text="hi"))
        events.record("other-org", "alpha", call_event("call.started", "c9"))  # never seen
        events.record("acme", "alpha", call_event("user.message", text="yo"))
        got = await take(frames, 3)
    listener.cancel()
    await events.stop()
    assert [f["seq"] for f in got] == [1, 2, 3]
    assert [(f["event"], f["agent"]) for f in got] == [
        ("call.started", "alpha"),
        ("user.message", "beta"),
        ("user.message", "alpha"),
    ]
    assert got[2]["session_id"] == "s1"  # learned from call.started
    assert all(isinstance(f["ts"], float) for f in got)


async def test_frames_without_a_call_are_not_kept() -> None:
    store = MemoryStore()
    events = await log_of(store)
    events.record("acme", "alpha", {"event": "channel.added", "type": "chat"})
    await events._drain()
    assert (await store.read_events("acme", 0, 10)).last == 0


async def test_after_replays_what_is_kept_then_goes_live() -> None:
    store = MemoryStore()
    events, listener = await wired(store)
    for i in range(5):
        events.record("acme", "alpha", call_event("user.message", text=str(i)))
    await settle(events)
    with events.subscribe(ALL, 100) as sub:
        frames = sub.frames(2)
        replay = await take(frames, 4)
        events.record("acme", "beta", call_event("user.message", "c2", text="live"))
        live = await take(frames, 1)
    listener.cancel()
    await events.stop()
    assert [f.get("seq") for f in replay] == [3, 4, 5, None]
    assert replay[-1] == {"event": "log.caught_up", "data": {"seq": 5}}
    assert live[0]["seq"] == 6 and live[0]["text"] == "live"


async def test_a_cursor_older_than_what_is_kept_gets_a_gap_marker_first() -> None:
    store = MemoryStore()
    events, listener = await wired(store, retention=3)
    for i in range(10):
        events.record("acme", "alpha", call_event("user.message", text=str(i)))
    await settle(events)
    with events.subscribe(ALL, 100) as sub:
        got = await take(sub.frames(2), 5)
    listener.cancel()
    await events.stop()
    assert got[0] == {"event": "log.gap", "data": {"from": 2, "resume_from": 7}}
    assert [f.get("seq") for f in got[1:]] == [8, 9, 10, None]


async def test_a_cursor_from_beyond_the_log_is_declared_a_gap() -> None:
    store = MemoryStore()
    events = await log_of(store)
    with events.subscribe(ALL, 100) as sub:
        got = await take(sub.frames(40), 2)
    assert got == [
        {"event": "log.gap", "data": {"from": 40, "resume_from": 0}},
        {"event": "log.caught_up", "data": {"seq": 0}},
    ]


async def test_entries_that_skipped_the_bus_are_read_back_from_the_store_in_order() -> None:
    """Bus messages from two nodes can cross, or be lost: the subscription reads back the jump."""
    store = MemoryStore()
    events = await log_of(store)
    with events.subscribe(ALL, 100) as sub:
        frames = sub.frames(None)
        await take(frames, 1)
        raws = [json.dumps(call_event("e", text=str(i)) | {"agent_id": "alpha"}) for i in range(4)]
        assert await store.log_events("acme", raws, 100, 60) == [1, 2, 3, 4]
        # Only 4 and then 2 reach this node: 1 and 3 never do, 2 comes late.
        await events.on_bus({"o": "acme", "e": [[4, raws[3]]]})
        await events.on_bus({"o": "acme", "e": [[2, raws[1]]]})
        got = await take(frames, 4)
    assert [(f["seq"], f["text"]) for f in got] == [(1, "0"), (2, "1"), (3, "2"), (4, "3")]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (StreamFilter("acme", frozenset({"beta"})), ["c2", "c2", "c3"]),
        (StreamFilter("acme", frozenset({"alpha", "beta"}), call_id="c3"), ["c3"]),
        (StreamFilter("acme", frozenset({"alpha", "beta"}), session="s2"), ["c2", "c2"]),
        (StreamFilter("acme", frozenset({"alpha", "beta"}), session="c1"), ["c1"]),
    ],
)
async def test_filters_narrow_to_agents_calls_and_sessions(where: StreamFilter, expected: list[str]) -> None:
    store = MemoryStore()
    events = await log_of(store)
    events.record("acme", "alpha", call_event("call.started", "c1", session_id="s1"))
    events.record("acme", "beta", call_event("call.started", "c2", session_id="s2"))
    events.record("acme", "beta", call_event("user.message", "c2"))
    events.record("acme", "beta", call_event("call.started", "c3", session_id="s3"))
    await events._drain()
    with events.subscribe(where, 100) as sub:
        got = await take(sub.frames(0), len(expected) + 1)
    assert [f["call_id"] for f in got[:-1]] == expected
    assert got[-1] == {"event": "log.caught_up", "data": {"seq": 4}}


async def test_a_reader_that_falls_too_far_behind_is_cut_off_not_buffered() -> None:
    store = MemoryStore()
    events = await log_of(store)
    with events.subscribe(ALL, 5) as sub:
        frames = sub.frames(None)
        await take(frames, 1)
        for n in range(1, 50):
            sub.offer(n, call_event("e") | {"agent_id": "alpha"})
        assert sub._queue.qsize() <= 6  # the bound, plus the one marker that ends the stream
        with pytest.raises(SlowConsumer):
            await take(frames, 50)
    assert events.streams == 0


async def test_a_store_failure_drops_the_batch_and_counts_it() -> None:
    class Broken(MemoryStore):
        async def log_events(self, *args: Any, **kwargs: Any) -> list[int]:
            from server.errors import StoreUnavailable

            raise StoreUnavailable("down")

    events = await log_of(Broken())
    events.record("acme", "alpha", call_event("call.started"))
    await events._drain()
    assert events.dropped == 1


async def test_an_oversized_event_is_kept_as_its_name_and_ids() -> None:
    store = MemoryStore()
    events = await log_of(store)
    events.record("acme", "alpha", call_event("user.message", text="x" * 100_000))
    await events._drain()
    ((_, raw),) = (await store.read_events("acme", 0, 10)).entries
    kept = json.loads(raw)
    assert kept["truncated"] is True and "text" not in kept and kept["event"] == "user.message"
