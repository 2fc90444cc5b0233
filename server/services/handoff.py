"""Rolling restarts without refused sessions (issue 14): where a mint sends the browser while the
node that holds the agent drains.

A draining node tells every node so (bus message ``draining``), refuses new sessions and lets
each SDK socket go as soon as its agents have no live session there (close 1012: the SDK
reconnects through the load balancer, about a second later, and registers on a live node).
Before it lets one go it says its agents are ``moving``.

A mint for an agent that sits on a draining node, or that is moving (offline for the second its
SDK takes to come back), waits up to :data:`HANDOFF_SECONDS` for the agent to be on a live node
and answers that node's URL. An agent still held past that (a long call keeps its socket there)
gets this node's own URL instead: the session is served here and relayed to the agent's node
(CONTRACT §8). A mint on the draining node itself (the load balancer has not noticed yet) has no
better answer than the old one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from server.errors import AgentNotOnline
from server.store.base import AgentRecord

HANDOFF_SECONDS = 3.0  # a mint waits this long for a moving agent (the SDK is back in ~1.2 s)
POLL_SECONDS = 0.1
NOTICE_SECONDS = 120.0  # how long a "draining" or "moving" notice counts
Clock = Callable[[], float]
Lookup = Callable[[], Awaitable[AgentRecord]]  # a fresh read of the agent (raises AgentNotOnline)


class Handoff:
    def __init__(self, node_id: str, public_url: str, clock: Clock = time.monotonic) -> None:
        self._node_id = node_id
        self._public_url = public_url
        self._clock = clock
        self.draining: dict[str, float] = {}  # node id -> until when the notice counts
        self.moving: dict[str, float] = {}  # "org/agent" and "agent" -> until

    def on_notice(self, kind: str, key: str) -> None:
        """A ``draining`` or ``ready`` (node id) or ``moving`` ("org/agent") message from the bus.
        ``ready`` comes from a node starting: a restarted node keeps its id, and its earlier
        drain no longer counts."""
        until = self._clock() + NOTICE_SECONDS
        if kind == "ready":
            self.draining.pop(key, None)
        elif kind == "draining":
            self.draining[key] = until
        elif kind == "moving":
            self.moving[key] = until
            self.moving[key.partition("/")[2]] = until

    def _noted(self, notices: dict[str, float], key: str) -> bool:
        until = notices.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del notices[key]
            return False
        return True

    def is_draining(self, node_id: str) -> bool:
        return bool(self.draining) and self._noted(self.draining, node_id)

    def is_moving(self, key: str) -> bool:
        return bool(self.moving) and self._noted(self.moving, key)

    async def find(self, key: str, lookup: Lookup, forget: Callable[[], None]) -> AgentRecord:
        """``lookup()``, waiting up to HANDOFF_SECONDS when the agent is offline only because it
        is moving off a draining node (``key``: "org/agent", or the agent id on the public path)."""
        try:
            return await lookup()
        except AgentNotOnline:
            if not self.is_moving(key):
                raise
        deadline = self._clock() + HANDOFF_SECONDS
        while True:
            await asyncio.sleep(POLL_SECONDS)
            forget()
            try:
                return await lookup()
            except AgentNotOnline:
                if self._clock() >= deadline:
                    raise

    async def server_for(self, record: AgentRecord, lookup: Lookup, forget: Callable[[], None]) -> str:
        """The ``server`` a mint answers for ``record``: its node, unless that node drains."""
        if not self.is_draining(record.node_id):
            return record.node_url
        deadline = self._clock() + HANDOFF_SECONDS
        latest = record
        while self._clock() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            forget()
            try:
                latest = await lookup()
            except AgentNotOnline:
                continue  # between its old socket and its new one
            if not self.is_draining(latest.node_id):
                return latest.node_url
        if self.is_draining(self._node_id):
            return latest.node_url
        return self._public_url  # served here, relayed to the agent's node
