"""One running process per ``VOICE_NODE_ID`` (issue 15: a duplicated id silently defeated
``AGENT_IN_USE``, since both processes took the other's agents for their own).

A node holds the store name ``node:<id>``, its value ``<instance>.<beat>`` rewritten on every
beat (each second) and expiring after three missed beats. At start-up a node
that finds the name held watches it for one beat and a margin: a value that changes belongs to
a live process with the same id, and the start is refused (:class:`DuplicateNodeId`); a value
that stays put was left by a previous run that died, and is taken over at once. A clean stop
releases the name, so a restart after one waits for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from server.core.redaction import masked_url
from server.errors import VoiceError
from server.store.base import Store

log = logging.getLogger("voice.node")


BEAT_SECONDS = 1.0


def presence_name(node_id: str) -> str:
    """The store name a running node with ``node_id`` holds."""
    return "node:" + node_id


class DuplicateNodeId(RuntimeError):
    """Another live process runs with this ``VOICE_NODE_ID``."""


class NodePresence:
    def __init__(self, store: Store, node_id: str, ttl: float, poll: float = 0.25) -> None:
        self._store = store
        self._name = presence_name(node_id)
        self._node_id = node_id
        # Beats more often than agents' heartbeats (two small commands a second): a start-up
        # that finds the id held waits one beat to tell a live holder from a dead run's record.
        self._interval = min(ttl / 3, BEAT_SECONDS)
        # Gone within three missed beats: AGENT_IN_USE tells the SDK whether a holder's node
        # is alive (holder_alive) before that node's agent records expire.
        self._ttl = min(ttl, 3 * self._interval)
        self._poll = poll
        self._instance = uuid.uuid4().hex[:12]
        self._beat = 0
        self._task: asyncio.Task[None] | None = None
        self.store_down = False

    @property
    def _value(self) -> str:
        return f"{self._instance}.{self._beat}"

    async def start(self) -> None:
        """Claim the id, or raise :class:`DuplicateNodeId`. A store that is down only skips
        the check (the node fails closed on its own and the beat keeps trying)."""
        try:
            await self._claim()
        except VoiceError as exc:
            log.warning("could not check that VOICE_NODE_ID %s is unique: %s", self._node_id, exc.detail)
        self._task = asyncio.create_task(self._beats(), name="node-presence")

    async def _claim(self) -> None:
        holder = await self._store.claim_name(self._name, self._value, self._ttl)
        if holder is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._interval * 1.5 + 0.25  # one beat of the holder, and a margin
        while loop.time() < deadline:
            await asyncio.sleep(self._poll)
            seen = await self._store.lookup_name(self._name)
            if seen is not None and seen != holder:
                raise DuplicateNodeId(
                    f"VOICE_NODE_ID {self._node_id!r} is in use by another running node; "
                    "give every node its own id"
                )
            if seen is None:
                break  # expired or released: free
        # Left by a run that died: take it over (only while it still holds that stale value).
        await self._store.release_name(self._name, holder)
        if await self._store.claim_name(self._name, self._value, self._ttl) is not None:
            raise DuplicateNodeId(f"VOICE_NODE_ID {self._node_id!r} was claimed by another node starting now")

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            previous = self._value
            self._beat += 1
            try:
                await self._store.release_name(self._name, previous)
                holder = await self._store.claim_name(self._name, self._value, self._ttl)
                if holder is not None and holder.partition(".")[0] == self._instance:
                    # Our own earlier beat: its reply was lost, or a promoted replica kept an
                    # older value (asynchronous replication). Not another process: take it back.
                    await self._store.release_name(self._name, holder)
                    holder = await self._store.claim_name(self._name, self._value, self._ttl)
                if holder is not None:
                    log.error(
                        "VOICE_NODE_ID %s is also used by another running node: agents on both "
                        "will be taken for each other's; give every node its own id",
                        self._node_id,
                    )
                    self._beat -= 1
            except VoiceError as exc:
                self._beat -= 1
                # The beat is the node's store-health line: one warning when the store goes, one
                # line when it is back, not one per retry (the other loops stay quiet about it).
                if not self.store_down:
                    self.store_down = True
                    log.warning(
                        "the store at %s is unreachable: %s; retrying, and saying so when it is back",
                        masked_url(self._store.url),
                        exc.detail,
                    )
                continue
            if self.store_down:
                self.store_down = False
                log.warning("the store at %s is reachable again", masked_url(self._store.url))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(VoiceError):
            await self._store.release_name(self._name, self._value)
