"""The event log behind ``WS /ws/stream``: every event of an org's calls, numbered once, kept a
while, read live and replayed from a cursor on any node.

One log per org, not per agent. A stream token may name several agents, and the SDK's
``EventStream`` keeps one cursor per socket (it drops any frame whose ``seq`` is not above the
last one it saw), so the numbers must rise across every agent one socket can see. A token never
crosses orgs, so one numbering per org is enough. Per agent the numbers still rise, with holes.

Write: :meth:`EventLog.record` queues the frame and returns; it never awaits, so a call never
waits for the store. One writer task per node appends the queue to the org's log in the store,
which gives the numbers (:meth:`EventStore.log_events`), then publishes the numbered entries on
the bus channel ``events``. If the store fails, the batch is dropped (logged and counted):
watching a call must never break it.

Read: every node listens on ``events`` and hands each entry to the local :class:`Subscription`
objects it matches. Messages from two nodes can arrive out of order, and a subscription can miss
some (for example while the bus reconnects). One org's numbers have no holes, so a subscription
sees every jump and reads the missing entries back from the store before it goes on. A socket
therefore gets its events in order, each once, or a ``log.gap`` frame that says which ones it
cannot have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from server.errors import SlowConsumer, VoiceError
from server.store.base import EventStore

log = logging.getLogger("voice.events")
Entry = dict[str, Any]
Publish = Callable[[str, str], Awaitable[int]]  # (channel, message) -> receivers
CHANNEL = "events"
PAGE = 500  # entries per store read
MAX_PENDING = 10_000  # events waiting for the writer; past it the oldest are dropped
MAX_BATCH = 200  # events per store write
MAX_ENTRY_BYTES = 16 * 1024  # a larger event is kept as its name and ids only
KNOWN_SESSIONS = 10_000  # call id -> session id, for session= filters


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which entries one socket sees: its token's agents (and call), narrowed by the query."""

    org_id: str
    agents: frozenset[str]
    call_id: str | None = None  # the token's call pin
    session: str | None = None  # session=: a call id or a session id

    def matches(self, entry: Mapping[str, Any]) -> bool:
        if entry.get("agent_id") not in self.agents:
            return False
        if self.call_id is not None and entry.get("call_id") != self.call_id:
            return False
        return self.session is None or self.session in (entry.get("call_id"), entry.get("session_id"))


class _Fill(NamedTuple):
    before: int  # read the store for every entry below this number not yet seen


def gap_frame(asked: int, resume_from: int) -> Entry:
    """What a socket gets when entries after its cursor are no longer kept (or never were)."""
    return {"event": "log.gap", "data": {"from": asked, "resume_from": resume_from}}


class Subscription:
    """One stream socket's view of its org's log: replay from a cursor, then live, in order."""

    def __init__(self, events: EventLog, where: StreamFilter, limit: int) -> None:
        self.where = where
        self._events = events
        self._limit = limit
        self._queue: asyncio.Queue[tuple[int, Entry] | _Fill | None] = asyncio.Queue()
        self._seen: int | None = None  # the highest number the bus has shown us
        self.cursor = 0  # every entry up to here has been considered
        self.overflowed = False

    def offer(self, number: int, entry: Entry) -> None:
        """An entry from the bus (called by the listener; never awaits)."""
        if self.overflowed or (self._seen is not None and number <= self._seen):
            return
        if self._seen is None or number > self._seen + 1:
            self._put(_Fill(number))  # something in between never reached us: read it back
        self._seen = number
        if self.where.matches(entry):
            self._put((number, entry))

    def _put(self, item: tuple[int, Entry] | _Fill) -> None:
        if self._queue.qsize() >= self._limit:
            self.overflowed = True
            self._queue.put_nowait(None)  # the reader raises SlowConsumer when it gets here
            return
        self._queue.put_nowait(item)

    async def frames(self, after: int | None) -> AsyncIterator[Entry]:
        """Replay what is kept after ``after`` (none when None: live only), ``log.caught_up``,
        then live entries until the socket goes; SlowConsumer when it fell too far behind."""
        store, org = self._events.store, self.where.org_id
        if after is None:
            self.cursor = (await store.read_events(org, 0, 0)).last
        else:
            self.cursor = after
            async for frame in self._read_until(None):
                yield frame
        yield {"event": "log.caught_up", "data": {"seq": self.cursor}}
        while True:
            item = await self._queue.get()
            if item is None:
                raise SlowConsumer(
                    f"this stream fell more than {self._limit} events behind; reconnect with after=<last seq>"
                )
            if isinstance(item, _Fill):
                async for frame in self._read_until(item.before):
                    yield frame
                continue
            number, entry = item
            if number > self.cursor:
                self.cursor = number
                yield {"seq": number, **entry}

    async def _read_until(self, before: int | None) -> AsyncIterator[Entry]:
        """Entries from the store after the cursor (and below ``before``), a gap frame first when
        some of them are no longer kept."""
        store, org = self._events.store, self.where.org_id
        while before is None or self.cursor < before - 1:
            page = await store.read_events(org, self.cursor, PAGE)
            if page.last < self.cursor:  # a cursor this log never reached: it expired or was reset
                yield gap_frame(self.cursor, page.last)
                self.cursor = page.last
                return
            if page.entries and page.entries[0][0] > self.cursor + 1:
                yield gap_frame(self.cursor, page.entries[0][0] - 1)
            for number, raw in page.entries:
                if before is not None and number >= before:
                    return
                self.cursor = number
                entry = json.loads(raw)
                if self.where.matches(entry):
                    yield {"seq": number, **entry}
            if len(page.entries) < PAGE:
                if before is not None:
                    self.cursor = max(self.cursor, before - 1)
                return


class EventLog:
    def __init__(self, store: EventStore, retention: int, retention_seconds: float) -> None:
        self.store = store
        self._retention = retention
        self._ttl = retention_seconds
        self._pending: list[tuple[str, Entry]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)
        self._sessions: OrderedDict[str, str] = OrderedDict()  # call id -> session id
        self.dropped = 0  # events lost to a full queue or a failed store write
        self.streams = 0  # sockets open on this node
        self.publish: Publish | None = None  # the bus; the node wires it in

    # -- writing ---------------------------------------------------------------------------
    def record(self, org_id: str, agent_id: str, frame: Mapping[str, Any]) -> None:
        """Note an event of one of ``agent_id``'s calls (frames without a ``call_id`` are not
        call events and are not kept)."""
        call_id = frame.get("call_id")
        if not isinstance(call_id, str):
            return
        entry: Entry = {**frame, "agent_id": agent_id, "agent": agent_id, "ts": round(time.time(), 3)}
        session_id = frame.get("session_id")
        if isinstance(session_id, str):
            self._sessions[call_id] = session_id
            if len(self._sessions) > KNOWN_SESSIONS:
                self._sessions.popitem(last=False)
        elif call_id in self._sessions:
            entry["session_id"] = self._sessions[call_id]
        if frame.get("event") == "call.ended" and not call_id.startswith("chat-"):
            self._sessions.pop(call_id, None)  # a chat's llm.chat.ended still follows
        elif frame.get("event") == "llm.chat.ended":
            self._sessions.pop(call_id, None)
        self._pending.append((org_id, entry))
        if len(self._pending) > MAX_PENDING:
            del self._pending[0]
            self.dropped += 1
        self._wake.set()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="event-log-writer")

    async def stop(self) -> None:
        """Stop the writer, after one last bounded try at what is still queued (the
        ``call.ended`` of sessions ended by the shutdown)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._drain()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            by_org: dict[str, list[str]] = defaultdict(list)
            for org_id, entry in batch:
                by_org[org_id].append(_encode(entry))
            for org_id, raws in by_org.items():
                await self._append(org_id, raws)

    async def _append(self, org_id: str, raws: list[str]) -> None:
        try:
            numbers = await self.store.log_events(org_id, raws, self._retention, self._ttl)
            if self.publish is not None:
                message = {"o": org_id, "e": [[n, raw] for n, raw in zip(numbers, raws, strict=True)]}
                await self.publish(CHANNEL, json.dumps(message, separators=(",", ":")))
        except VoiceError as exc:
            self.dropped += len(raws)
            log.warning("dropped %d stream events of org %s: %s", len(raws), org_id, exc.detail)
        except Exception:
            self.dropped += len(raws)
            log.exception("dropped %d stream events of org %s", len(raws), org_id)

    # -- reading ---------------------------------------------------------------------------
    async def on_bus(self, message: dict[str, Any]) -> None:
        """Numbered entries published by some node: to the subscriptions of their org here."""
        subscriptions = self._subscriptions.get(str(message.get("o")))
        if not subscriptions:
            return
        for number, raw in message.get("e", ()):
            entry = json.loads(raw)
            for subscription in list(subscriptions):
                subscription.offer(int(number), entry)

    @contextlib.contextmanager
    def subscribe(self, where: StreamFilter, limit: int) -> Iterator[Subscription]:
        subscription = Subscription(self, where, limit)
        self._subscriptions[where.org_id].add(subscription)
        self.streams += 1
        try:
            yield subscription
        finally:
            self.streams -= 1
            held = self._subscriptions.get(where.org_id)
            if held is not None:
                held.discard(subscription)
                if not held:
                    del self._subscriptions[where.org_id]


def _encode(entry: Entry) -> str:
    raw = json.dumps(entry, separators=(",", ":"), default=str)
    if len(raw) <= MAX_ENTRY_BYTES:
        return raw
    keep = ("event", "agent_id", "agent", "call_id", "session_id", "ts")
    return json.dumps({**{k: entry[k] for k in keep if k in entry}, "truncated": True}, separators=(",", ":"))
