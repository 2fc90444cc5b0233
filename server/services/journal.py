"""The inspection journal: every decision the server made, numbered once across the deployment.

It exists only when inspection is on (``VOICE_INSPECT``); off, ``node.journal`` is None and the
mint and consume paths pay one ``is None`` check. On, they pay :meth:`Journal.note`: a dict
appended to a list, no await. One writer task per node wakes on the next event-loop turn, gathers
for a few milliseconds more, and appends what was noted, as one batch, to the capped log
``_voice/journal`` in the store (:meth:`EventStore.log_events`: a Redis stream trimmed to
``VOICE_INSPECT_JOURNAL_MAX`` with numbers Redis gives, so two nodes never give one twice), and
each session's frames to its own capped timeline ``_voice/tl/<call_id>``. It then publishes
``_voice/journal`` on the bus so live readers (``/_voice/journal/stream``) on every node read on.

Like the event stream, a failed write drops its batch (logged and counted): inspecting a server
must never break it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.errors import VoiceError
from server.store.base import EventPage, Store

log = logging.getLogger("voice.journal")
Entry = dict[str, Any]
JOURNAL = "_voice/journal"
TIMELINE = "_voice/tl/"
CHANNEL = "_voice/journal"
JOURNAL_TTL = 7 * 86400.0  # the log expires a week after its last write
TIMELINE_MAX = 2000  # frames kept per session (the oldest go first)
TIMELINE_TTL = 86400.0
MAX_PENDING = 50_000  # entries waiting for the writer; past it the oldest are dropped
PAGE = 1000
SETTLE_SECONDS = 2.0
GATHER_SECONDS = 0.005


class Journal:
    def __init__(self, store: Store, node_id: str, cap: int, clock: Callable[[], float]) -> None:
        self.store = store
        self.node_id = node_id
        self.cap = cap
        self.clock = clock
        self._pending: list[Entry] = []
        self._frames: dict[str, list[Entry]] = defaultdict(list)  # call id -> timeline entries
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._listeners: set[asyncio.Event] = set()
        self.dropped = 0

    # -- writing ---------------------------------------------------------------------------
    def note(self, kind: str, **fields: Any) -> None:
        """Record a decision (never awaits: the hot path only appends to a list)."""
        self._pending.append({"at": round(self.clock(), 3), "kind": kind, "node": self.node_id, **fields})
        if len(self._pending) > MAX_PENDING:
            del self._pending[0]
            self.dropped += 1
        self._idle.clear()
        self._wake.set()

    def frame(self, call_id: str, direction: str, frame: Any) -> None:
        """One frame of a session's timeline; binary audio is counted, never kept."""
        timeline = self._frames[call_id]
        if isinstance(frame, bytes | bytearray | memoryview) or frame == "audio":
            last = timeline[-1] if timeline else None
            if last is not None and last.get("event") == "audio" and last["direction"] == direction:
                last["audio_frames"] += 1
                return
            entry: Entry = {"event": "audio", "audio_frames": 1}
        elif isinstance(frame, dict):
            entry = {"event": str(frame.get("event", "?")), **_summary(frame)}
        else:
            entry = {"event": str(frame)}
        timeline.append({"at": round(self.clock(), 3), "direction": direction, **entry})
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name="journal-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._drain()

    async def settle(self) -> None:
        """Wait (up to 2 s) until what this node noted so far is in the store: a read that follows
        a mint on this node sees it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_SECONDS):
                await self._idle.wait()

    def discard_pending(self) -> None:
        """Forget what is not written yet (a reset: it belongs to the state being dropped)."""
        self._pending.clear()
        self._frames.clear()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            # A short gather: under load the entries of many requests share one store write (and
            # one bus notice) instead of paying a pipeline each (scripts/bench --inspect on).
            await asyncio.sleep(GATHER_SECONDS)
            self._wake.clear()
            await self._drain()
            if not self._pending and not self._frames:
                self._idle.set()

    async def _drain(self) -> None:
        while self._pending or self._frames:
            batch, self._pending = self._pending, []
            frames, self._frames = self._frames, defaultdict(list)
            try:
                if batch:
                    raws = [json.dumps(e, separators=(",", ":"), default=str) for e in batch]
                    await self.store.log_events(JOURNAL, raws, self.cap, JOURNAL_TTL)
                for call_id, entries in frames.items():
                    raws = [json.dumps(e, separators=(",", ":"), default=str) for e in entries]
                    await self.store.log_events(TIMELINE + call_id, raws, TIMELINE_MAX, TIMELINE_TTL)
                if batch:
                    await self.store.publish(CHANNEL, "{}")
            except VoiceError as exc:
                self.dropped += len(batch)
                log.warning("dropped %d journal entries: %s", len(batch), exc.detail)
            except Exception:
                self.dropped += len(batch)
                log.exception("dropped %d journal entries", len(batch))

    # -- reading ---------------------------------------------------------------------------
    async def on_bus(self, message: dict[str, Any]) -> None:
        """Some node wrote: wake the live readers here."""
        for listener in list(self._listeners):
            listener.set()

    async def page(self, after: int, limit: int) -> EventPage:
        return await self.store.read_events(JOURNAL, after, limit)

    async def entries(self) -> list[tuple[int, Entry]]:
        """Everything the journal holds, oldest first (it is capped, so this is bounded)."""
        held: list[tuple[int, Entry]] = []
        after = 0
        while True:
            page = await self.store.read_events(JOURNAL, after, PAGE)
            held.extend((n, json.loads(raw)) for n, raw in page.entries)
            if len(page.entries) < PAGE:
                return held
            after = page.entries[-1][0]

    async def timeline(self, call_id: str) -> list[Entry]:
        held: list[Entry] = []
        after = 0
        while True:
            page = await self.store.read_events(TIMELINE + call_id, after, PAGE)
            held.extend(json.loads(raw) for _, raw in page.entries)
            if len(page.entries) < PAGE:
                return held
            after = page.entries[-1][0]

    async def follow(self, after: int, poll: float = 1.0) -> AsyncIterator[tuple[int, Entry]]:
        """Entries numbered above ``after``, then live ones as any node writes them."""
        wake = asyncio.Event()
        self._listeners.add(wake)
        try:
            while True:
                wake.clear()
                page = await self.store.read_events(JOURNAL, after, PAGE)
                if page.last < after:  # the journal was reset under this cursor
                    after = 0
                    continue
                for number, raw in page.entries:
                    after = number
                    yield number, json.loads(raw)
                if len(page.entries) == PAGE:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await wake.wait()
        finally:
            self._listeners.discard(wake)


_KEEP = ("call_id", "session_id", "agent_id", "reason", "code", "text", "message", "role", "thread")


def _summary(frame: dict[str, Any]) -> Entry:
    """What a timeline keeps of a frame: its ids and short text fields, never audio or secrets."""
    kept: Entry = {}
    for name in _KEEP:
        value = frame.get(name)
        if isinstance(value, str):
            kept[name] = value[:500]
        elif isinstance(value, int | float | bool):
            kept[name] = value
    return kept
