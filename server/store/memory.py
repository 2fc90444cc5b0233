"""The embedded store: one process, no dependencies, the zero-config default.

Single-threaded asyncio makes each method atomic as long as it does not await, and none of
them does before deciding. Expiry is lazy (checked on read) plus a sweep every few hundred
writes, so abandoned tokens do not pile up.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from server.core.apikeys import ApiKey
from server.core.ratelimit import Verdict, judge, window_ms
from server.store.base import FAMILIES, AgentRecord, EventPage, Hit, agent_key

Clock = Callable[[], float]
SWEEP_EVERY = 512


@dataclass(slots=True)
class _EventLog:
    last: int = 0
    entries: deque[tuple[int, str]] = field(default_factory=deque)


class MemoryStore:
    def __init__(self, url: str = "memory://", clock: Clock = time.monotonic) -> None:
        self.url = url
        self._clock = clock
        self._values: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._writes = 0
        self._keys: dict[str, ApiKey] = {}  # key_id -> key
        self._digests: dict[str, str] = {}  # digest -> key_id
        self._subscribers: dict[str, set[asyncio.Queue[str]]] = defaultdict(set)

    # -- expiring values -------------------------------------------------------------------
    def _get(self, key: str) -> Any:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        return self._values.get(key)

    def _set(self, key: str, value: Any, ttl: float | None) -> None:
        self._values[key] = value
        if ttl is None:
            self._expiry.pop(key, None)
        else:
            self._expiry[key] = self._clock() + ttl
        self._writes += 1
        if self._writes % SWEEP_EVERY == 0:
            self._sweep()

    def _delete(self, key: str) -> bool:
        present = self._get(key) is not None
        self._values.pop(key, None)
        self._expiry.pop(key, None)
        return present

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, deadline in self._expiry.items() if deadline <= now]:
            self._values.pop(key, None)
            self._expiry.pop(key, None)

    def _count(self, hit: Hit) -> Verdict:
        key = "rl:" + hit.key
        window = self._get(key)
        if window is None:
            window = [0]
            self._set(key, window, window_ms(hit.limit) / 1000)
        window[0] += 1
        remaining_ms = int((self._expiry[key] - self._clock()) * 1000)
        return judge(hit.limit, window[0], remaining_ms)

    def __len__(self) -> int:
        """Live entries (for tests of the sweep)."""
        self._sweep()
        return len(self._values)

    # -- tokens ----------------------------------------------------------------------------
    async def issue_token(self, jti: str, ttl: float, hits: Sequence[Hit]) -> Verdict:
        verdict = await self.hit(hits)
        if verdict.allowed:
            self._set("tok:" + jti, True, ttl)
        return verdict

    async def consume_token(self, jti: str) -> bool:
        return self._delete("tok:" + jti)

    async def hit(self, hits: Sequence[Hit]) -> Verdict:
        verdicts = [self._count(h) for h in hits if h.limit.enabled]
        refused = [v for v in verdicts if not v.allowed]
        return refused[0] if refused else Verdict(True, 0)

    # -- API keys --------------------------------------------------------------------------
    async def put_key(self, key: ApiKey, digest: str) -> None:
        self._keys[key.key_id] = key
        self._digests[digest] = key.key_id

    async def key_by_digest(self, digest: str) -> ApiKey | None:
        key_id = self._digests.get(digest)
        return None if key_id is None else self._keys.get(key_id)

    async def list_keys(self) -> list[ApiKey]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None:
        key = self._keys.get(key_id)
        if key is None:
            return None
        if key.revoked_at is None or key.revoked_at > at:  # only ever earlier (a rotation's grace)
            key = self._keys[key_id] = replace(key, revoked_at=at)
        return key

    async def touch_key(self, key_id: str, at: float) -> None:
        key = self._keys.get(key_id)
        if key is not None:
            self._keys[key_id] = replace(key, last_used_at=at)

    # -- agents ----------------------------------------------------------------------------
    async def claim_agent(self, record: AgentRecord, ttl: float, replace: str | None = None) -> str | None:
        key = "ag:" + agent_key(record.org_id, record.agent_id)
        current: AgentRecord | None = self._get(key)
        if current is not None and current.owner not in (record.owner, replace):
            return current.owner
        self._set(key, record, ttl)
        return None

    async def get_agent(self, org_id: str, agent_id: str) -> AgentRecord | None:
        record: AgentRecord | None = self._get("ag:" + agent_key(org_id, agent_id))
        return record

    async def release_agent(self, org_id: str, agent_id: str, owner: str) -> None:
        key = "ag:" + agent_key(org_id, agent_id)
        current: AgentRecord | None = self._get(key)
        if current is not None and current.owner == owner:
            self._delete(key)

    async def refresh_agent(self, record: AgentRecord, ttl: float) -> bool:
        key = "ag:" + agent_key(record.org_id, record.agent_id)
        current: AgentRecord | None = self._get(key)
        if current is None or current.owner != record.owner:
            return False
        self._expiry[key] = self._clock() + ttl
        return True

    async def claim_name(self, name: str, value: str, ttl: float) -> str | None:
        current: str | None = self._get("ix:" + name)
        if current is not None and current != value:
            return current
        self._set("ix:" + name, value, ttl)
        return None

    async def refresh_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[bool]:
        return [await self.refresh_agent(record, ttl) for record in records]

    async def claim_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[str | None]:
        return [await self.claim_agent(record, ttl) for record in records]

    async def claim_names(self, claims: Sequence[tuple[str, str]], ttl: float) -> list[str | None]:
        return [await self.claim_name(name, value, ttl) for name, value in claims]

    async def lookup_name(self, name: str) -> str | None:
        value: str | None = self._get("ix:" + name)
        return value

    async def release_name(self, name: str, value: str) -> None:
        if self._get("ix:" + name) == value:
            self._delete("ix:" + name)

    # -- messages --------------------------------------------------------------------------
    async def first_time(self, key: str, ttl: float) -> bool:
        if self._get("seen:" + key) is not None:
            return False
        self._set("seen:" + key, True, ttl)
        return True

    async def append(self, key: str, item: str, max_items: int, ttl: float, max_bytes: int = 0) -> int:
        items: list[str] = self._get("ls:" + key) or []
        items = [*items, item][-max_items:]
        if max_bytes > 0:
            sizes = [len(i.encode()) for i in items]
            total, drop = sum(sizes), 0
            while total > max_bytes and drop < len(items) - 1:
                total -= sizes[drop]
                drop += 1
            items = items[drop:]
        self._set("ls:" + key, items, ttl)
        return len(items)

    async def touch_index(self, index: str, member: str, cap: int, ttl: float) -> list[str]:
        now = self._clock()
        written: dict[str, float] = self._get("lx:" + index) or {}
        written = {m: at for m, at in written.items() if at > now - ttl and m != member}
        written[member] = now  # newest last: dicts keep insertion order
        over = max(0, len(written) - cap)
        evicted = list(written)[:over]
        for gone in evicted:
            del written[gone]
        self._set("lx:" + index, written, ttl)
        return evicted

    async def touch_indexes(self, touches: Sequence[tuple[str, str, int]], ttl: float) -> list[list[str]]:
        return [await self.touch_index(index, member, cap, ttl) for index, member, cap in touches]

    async def index_members(self, index: str, ttl: float) -> list[str]:
        now = self._clock()
        written: dict[str, float] = self._get("lx:" + index) or {}
        return [member for member, at in written.items() if at > now - ttl]

    async def read_list(self, key: str) -> list[str]:
        return list(self._get("ls:" + key) or [])

    async def pop_list(self, key: str) -> list[str]:
        items = await self.read_list(key)
        self._delete("ls:" + key)
        return items

    # -- event logs ------------------------------------------------------------------------
    async def log_events(self, log: str, entries: Sequence[str], max_items: int, ttl: float) -> list[int]:
        key = "ev:" + log
        held: _EventLog | None = self._get(key)
        if held is None:
            held = _EventLog()
        numbers = []
        for entry in entries:
            held.last += 1
            held.entries.append((held.last, entry))
            numbers.append(held.last)
        while len(held.entries) > max_items:
            held.entries.popleft()
        self._set(key, held, ttl)
        return numbers

    async def read_events(self, log: str, after: int, limit: int) -> EventPage:
        held: _EventLog | None = self._get("ev:" + log)
        if held is None or not held.entries:
            return EventPage([], 0, held.last if held is not None else 0)
        entries = [(n, e) for n, e in held.entries if n > after][:limit] if limit > 0 else []
        return EventPage(entries, held.entries[0][0], held.last)

    # -- inspection ------------------------------------------------------------------------
    async def clear(self, families: Sequence[str]) -> int:
        prefixes = tuple(p for family in families for p in FAMILIES[family])
        gone = [key for key in self._values if key.startswith(prefixes)]
        for key in gone:
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        return len(gone)

    async def get_value(self, key: str) -> str | None:
        value: str | None = self._get("v:" + key)
        return value

    async def set_value(self, key: str, value: str | None, ttl: float | None = None) -> None:
        if value is None:
            self._delete("v:" + key)
        else:
            self._set("v:" + key, value, ttl)

    # -- bus -------------------------------------------------------------------------------
    async def publish(self, channel: str, message: str) -> int:
        queues = self._subscribers.get(channel, set())
        for queue in queues:
            queue.put_nowait(message)
        return len(queues)

    async def subscribe(self, channel: str) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers[channel].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers[channel].discard(queue)
            if not self._subscribers[channel]:
                del self._subscribers[channel]

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def ping(self) -> float:
        return 0.0

    def observe_round_trips(self, observe: Callable[[float], None]) -> None:
        return None  # in-process: no round trips

    async def aclose(self) -> None:
        self._values.clear()
        self._expiry.clear()
