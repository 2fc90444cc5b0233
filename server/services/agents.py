"""The agent registry: which agents are online, on which node, and how to talk to them.

An agent is online while the /client socket that created it is open (CONTRACT §6). The record
lives in the shared store with a heartbeat TTL, so every node can answer a mint for it and a
node that dies takes its agents offline within ``agent_heartbeat_ttl`` seconds. The socket
itself lives on one node: frames for an agent are written locally when it is here.

Two indexes point at an agent record, both claimed atomically:
* ``pub:<agent_id>`` for agents with ``allowed_origins``: the key-less public mint path names
  only the agent, so an agent id is published by at most one org at a time;
* ``ch:<type>:<ref>`` for channels with a ``ref`` (a WhatsApp phone number id), so a webhook
  finds the agent that owns its number.

Two more indexes only list (``touch_index``: members written within ``LISTING_TTLS`` heartbeat
TTLs, written at registration and again every ``LISTING_EVERY``-th beat), and are never trusted
alone: each member is checked against its record, so a member that outlives its agent is harmless.
* ``agents:<org>`` holds the agent ids of an org, for ``GET /api/sdk/agents`` on any node;
* ``agent-orgs:<agent_id>`` holds the orgs that registered an agent id (two orgs may), so the
  key-less mint path can tell "online but not public" (403) from "offline" (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol

from server.core.cache import TtlCache
from server.core.origins import OriginPattern, parse_patterns
from server.errors import (
    AgentConflictFatal,
    AgentInUse,
    AgentNotOnline,
    ChannelNotFound,
    RegistrationError,
    VoiceError,
)
from server.services.presence import presence_name
from server.services.relay import Relay
from server.store.base import AgentRecord, AgentStore, agent_key

# What AGENT_IN_USE suggests to the SDK when the holder is alive (a second live process).
HELD_RETRY_SECONDS = 30
log = logging.getLogger("voice.agents")
Clock = Callable[[], float]
CHANNEL_TYPES = frozenset({"phone", "webrtc", "chat", "whatsapp", "sms", "stream", "sip"})
MAX_CHANNELS = 32
# Agents (or index claims) per store call on a heartbeat: one round trip each, and a pipeline
# small enough not to hold a connection or block Redis for long.
HEARTBEAT_BATCH = 500
# The listing indexes' caps: an org lists at most this many agents (the most recently beaten),
# and the key-less mint path looks at most at this many orgs of one agent id.
ORG_INDEX_CAP = 10_000
AGENT_ORGS_CAP = 64
# The listing indexes are written again every LISTING_EVERY beats (once per heartbeat TTL) and
# keep a member for LISTING_TTLS heartbeat TTLs: two of those writes can fail before an online
# agent drops out of a list. Writing them on every beat doubled a beat's time for 3,000 agents
# (redis-py builds and parses each of the 6,000 script calls).
LISTING_EVERY = 3
LISTING_TTLS = 3
# get_agent calls in flight while listing an org's agents.
LIST_CONCURRENCY = 50


class AgentConnection(Protocol):
    """A live /client socket (implemented in :mod:`server.realtime.client_ws`)."""

    conn_id: str
    org_id: str

    async def send(self, frame: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    node_id: str
    node_url: str
    heartbeat_ttl: float
    cache_seconds: float = 1.0


@lru_cache(maxsize=4096)
def patterns_of(raw: tuple[str, ...]) -> tuple[OriginPattern, ...]:
    """Parsed ``allowed_origins`` (validated at registration, so parsing cannot fail here)."""
    return parse_patterns(list(raw))


def public_name(agent_id: str) -> str:
    return "pub:" + agent_id


def channel_name(kind: str, ref: str) -> str:
    return f"ch:{kind}:{ref}"


def org_index(org_id: str) -> str:
    return "agents:" + org_id


def agent_orgs_index(agent_id: str) -> str:
    return "agent-orgs:" + agent_id


async def _touch_listings(store: AgentStore, records: Sequence[AgentRecord], ttl: float) -> None:
    """Write ``records`` into the listing indexes again (see the module docstring)."""
    touches = []
    for r in records:
        touches.append((org_index(r.org_id), r.agent_id, ORG_INDEX_CAP))
        touches.append((agent_orgs_index(r.agent_id), r.org_id, AGENT_ORGS_CAP))
    await store.touch_indexes(touches, ttl)


def _index_names(record: AgentRecord) -> list[str]:
    """The indexes ``record`` holds (see the module docstring)."""
    names = [public_name(record.agent_id)] if record.allowed_origins else []
    for channel in record.channels.values():
        if channel.get("ref"):
            names.append(channel_name(channel["type"], channel["ref"]))
    return names


@dataclass(frozen=True, slots=True)
class _Pending:
    connection: AgentConnection
    record: AgentRecord
    shown_as: str
    holder_frames: int | None = None  # the local holder's frame count when the conflict began


class AgentRegistry:
    def __init__(self, store: AgentStore, settings: RegistrySettings, clock: Clock = time.time) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._local: dict[str, tuple[AgentConnection, AgentRecord]] = {}  # agent_key -> (socket, record)
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_online: list[Callable[[AgentRecord], Any]] = []  # hooks (e.g. queued WhatsApp messages)
        # Vetoes on channel.add (record, type, ref): raise RegistrationError to refuse.
        self.channel_guards: list[Callable[[AgentRecord, str, str | None], Awaitable[None]]] = []
        # Node-local copies of records for the mint path; never older than cache_seconds, and
        # dropped on every node when an agent registers or goes offline anywhere.
        self._cache: TtlCache[str, AgentRecord] = TtlCache(settings.cache_seconds)
        # One store read per missing record, shared by every lookup that misses meanwhile.
        self._fetching: dict[str, asyncio.Future[AgentRecord | None]] = {}
        self.relay: Relay | None = None
        # Sees every frame sent to an agent's calls (the event log of WS /ws/stream); must not await.
        self.observe: Callable[[str, str, Mapping[str, Any]], None] | None = None
        # Owners are "<node>/<boot>/<connection>": a record left by a previous run of this node
        # (same node id, other boot) is stale and taken over at once.
        self._boot = secrets.token_hex(4)
        # agent_key -> a registration refused with AGENT_IN_USE, retried on every heartbeat:
        # when the holder goes away this connection takes over and gets agent.created then.
        self._pending: dict[str, _Pending] = {}
        self._beats = 0
        self._listing_ttl = settings.heartbeat_ttl * LISTING_TTLS

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat(), name="agent-heartbeat")

    async def stop(self) -> None:
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for key in list(self._local):
            _, record = self._local.pop(key)
            await self._forget(record)

    async def _beat(self) -> None:
        interval = self._settings.heartbeat_ttl / 3
        # A flag as well as the cancel: on Python 3.11 asyncio.wait_for (redis-py's socket writes)
        # returns instead of raising when the cancel lands as the write completes (CPython
        # gh-86296), and the beat would go on and stop() wait for it forever.
        while not self._stopping:
            await asyncio.sleep(interval)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """One beat: retry pending registrations, then extend every local agent and its indexes,
        claiming again the agents the store lost, ``HEARTBEAT_BATCH`` per store call (issue 15
        M8: at one round trip per agent, a beat for 3,000 agents 3 ms away took longer than the
        TTL). A batch the store fails is logged and retried next beat; the others go on."""
        await self._retry_pending()
        records = [record for _, record in self._local.values()]
        self._beats += 1
        listing = self._beats % LISTING_EVERY == 0
        for start in range(0, len(records), HEARTBEAT_BATCH):
            batch = records[start : start + HEARTBEAT_BATCH]
            try:
                await self._beat_batch(batch, listing)
            except VoiceError as exc:  # the store is down: fail closed, retry next beat
                log.warning(
                    "heartbeat for %d agents (%s, ...) failed: %s", len(batch), batch[0].agent_id, exc.detail
                )
            except Exception:
                log.exception("heartbeat failed for %d agents (%s, ...)", len(batch), batch[0].agent_id)

    async def _beat_batch(self, batch: list[AgentRecord], listing: bool) -> None:
        ttl = self._settings.heartbeat_ttl
        kept = await self._store.refresh_agents(batch, ttl)
        lost = [record for record, ok in zip(batch, kept, strict=True) if not ok]
        if lost:  # evicted, expired during a stall, or a Redis restart without persistence
            log.warning(
                "%d agents lost their registration (%s); claiming them again",
                len(lost),
                ", ".join(r.agent_id for r in lost[:5]) + (", ..." if len(lost) > 5 else ""),
            )
            for record, holder in zip(lost, await self._store.claim_agents(lost, ttl), strict=True):
                if holder is not None:
                    log.warning("agent %s is now held by %s", record.agent_id, holder)
        # The indexes expire with the heartbeat TTL too; claiming again extends them (and
        # restores them after a Redis restart).
        claims = [(name, agent_key(r.org_id, r.agent_id)) for r in batch for name in _index_names(r)]
        for start in range(0, len(claims), HEARTBEAT_BATCH):
            part = claims[start : start + HEARTBEAT_BATCH]
            for (name, key), holder in zip(part, await self._store.claim_names(part, ttl), strict=True):
                if holder is not None:
                    log.warning("index %s of agent %s belongs to %s", name, key, holder)
        if listing:
            await _touch_listings(self._store, batch, self._listing_ttl)

    # -- registration (from /client) -------------------------------------------------------
    async def register(
        self,
        connection: AgentConnection,
        agent_id: str,
        config: Mapping[str, Any],
        origins: object,
        shown_as: str | None = None,
        escalate: bool = True,
    ) -> AgentRecord:
        """Bring ``agent_id`` online for ``connection``; AgentInUse if another live socket holds
        it (the registration then stays pending and takes over when that socket goes away), or
        AgentConflictFatal on a retry (``escalate``) when that socket, here, has spoken since
        the first refusal."""
        patterns = parse_patterns(origins if origins is not None else [])
        key = agent_key(connection.org_id, agent_id)
        previous = self._local.get(key)
        channels = previous[1].channels if previous and previous[0] is connection else {}
        record = AgentRecord(
            org_id=connection.org_id,
            agent_id=agent_id,
            owner=f"{self._settings.node_id}/{self._boot}/{connection.conn_id}",
            node_id=self._settings.node_id,
            node_url=self._settings.node_url,
            allowed_origins=tuple(p.raw for p in patterns),
            config=dict(config),
            channels=channels,
            registered_at=self._clock(),
        )
        holder = await self._store.claim_agent(record, self._settings.heartbeat_ttl)
        if holder is not None and self._stale(holder):
            log.info("agent %s: taking over from %s, left by a previous run of this node", agent_id, holder)
            holder = await self._store.claim_agent(record, self._settings.heartbeat_ttl, replace=holder)
        if holder is not None:
            alive = await self._holder_alive(key, holder)
            pending = self._pending.get(key)
            started = (
                pending.holder_frames if pending is not None and pending.connection is connection else None
            )
            spoke = self._holder_frames(key)
            if escalate and alive and started is not None and spoke is not None and spoke > started:
                # The holder's socket is open here and has sent frames since this conflict began
                # (a live SDK pings every 30 s): it is not a stale registration and will not go
                # away. The SDK stops retrying on this code (dispatch/handlers/error.ts); so
                # does the server: no silent takeover later (issue 18 item 9).
                self._pending.pop(key, None)
                raise AgentConflictFatal(
                    f"Agent '{agent_id}' is held by a live process that keeps talking; not retrying. "
                    "Disconnect it (DELETE /api/sdk/agents/{slug}, `pinecall kick`) or use another id"
                )
            self._pending[key] = _Pending(
                connection, record, shown_as or agent_id, spoke if started is None else started
            )
            raise AgentInUse(
                f"Agent '{agent_id}' is already connected from another session; "
                "this connection takes over if that one goes away",
                holder_alive=alive,
                retry_after_s=HELD_RETRY_SECONDS if alive else math.ceil(self._settings.heartbeat_ttl),
            )
        self._pending.pop(key, None)
        try:
            await self._claim_indexes(record)
        except RegistrationError:
            await self._store.release_agent(record.org_id, record.agent_id, record.owner)
            raise
        if previous is not None and previous[1].allowed_origins and not record.allowed_origins:
            await self._store.release_name(public_name(agent_id), key)
        self._local[key] = (connection, record)
        await self._changed(record)
        for hook in self.on_online:
            await hook(record)
        return record

    def _holder_frames(self, key: str) -> int | None:
        """How many frames the local socket holding ``key`` has sent (None: not a /client socket
        on this node, whose liveness this node cannot watch)."""
        entry = self._local.get(key)
        count = getattr(entry[0], "frames_received", None) if entry is not None else None
        return count if isinstance(count, int) else None

    async def _holder_alive(self, key: str, holder: str) -> bool:
        """Whether the process holding the agent is running: its socket here is open, or its
        node still beats (``node:<id>``, services/presence.py). A dead holder's record expires
        within the heartbeat TTL, and the pending registration then takes over."""
        node_id = holder.partition("/")[0]
        if node_id == self._settings.node_id:
            return key in self._local
        try:
            return await self._store.lookup_name(presence_name(node_id)) is not None
        except VoiceError:
            return True  # unknown: the cautious answer (the SDK retries more slowly)

    def _stale(self, holder: str) -> bool:
        node_id, _, rest = holder.partition("/")
        boot = rest.partition("/")[0]
        return node_id == self._settings.node_id and boot != self._boot

    async def _retry_pending(self) -> None:
        for key, pending in list(self._pending.items()):
            if self._pending.get(key) is not pending:
                continue
            record = pending.record
            try:
                origins = list(record.allowed_origins)
                await self.register(
                    pending.connection,
                    record.agent_id,
                    record.config,
                    origins,
                    pending.shown_as,
                    escalate=False,
                )
            except AgentInUse:
                continue
            except Exception as exc:
                self._pending.pop(key, None)
                log.warning("pending registration of %s failed: %s", record.agent_id, exc)
                continue
            await pending.connection.send({"event": "agent.created", "agent_id": pending.shown_as})
            log.info("agent %s: pending registration took over", record.agent_id)

    async def _claim_indexes(self, record: AgentRecord) -> None:
        key = agent_key(record.org_id, record.agent_id)
        ttl = self._settings.heartbeat_ttl
        if record.allowed_origins and await self._store.claim_name(public_name(record.agent_id), key, ttl):
            raise RegistrationError(
                f"Agent id '{record.agent_id}' is already public (allowed_origins) in another org; "
                "public agent ids must be unique"
            )
        for channel in record.channels.values():
            ref = channel.get("ref")
            if ref and await self._store.claim_name(channel_name(channel["type"], ref), key, ttl):
                raise RegistrationError(f"{channel['type']} channel '{ref}' belongs to another agent")
        await _touch_listings(self._store, [record], self._listing_ttl)

    def owned(self, connection: AgentConnection, agent_id: str) -> AgentRecord:
        """The record of ``agent_id`` if ``connection`` holds it; RegistrationError otherwise."""
        return self._owned(connection, agent_id)

    def _owned(self, connection: AgentConnection, agent_id: str) -> AgentRecord:
        entry = self._local.get(agent_key(connection.org_id, agent_id))
        if entry is None or entry[0] is not connection:
            raise RegistrationError(f"Agent '{agent_id}' is not registered on this connection")
        return entry[1]

    async def _update(self, connection: AgentConnection, record: AgentRecord) -> AgentRecord:
        holder = await self._store.claim_agent(record, self._settings.heartbeat_ttl)
        if holder is not None:
            raise AgentInUse(f"Agent '{record.agent_id}' is held by another session")
        self._local[agent_key(record.org_id, record.agent_id)] = (connection, record)
        await self._changed(record)
        return record

    async def _changed(self, record: AgentRecord) -> None:
        """Drop every node's cached copy of ``record`` (best effort: the TTL bounds the rest)."""
        key = agent_key(record.org_id, record.agent_id)
        self.forget_cached(key)
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await self.relay.invalidate("agent", key)

    def forget_cached(self, key: str) -> None:
        self._cache.drop(key)
        self._fetching.pop(key, None)  # a read begun before the change is not cached
        self._cache.drop("pub:" + key.partition("/")[2])

    async def configure(
        self, connection: AgentConnection, agent_id: str, config: Mapping[str, Any]
    ) -> AgentRecord:
        record = self._owned(connection, agent_id)
        return await self._update(connection, replace(record, config={**record.config, **config}))

    async def add_channel(
        self, connection: AgentConnection, agent_id: str, frame: Mapping[str, Any]
    ) -> AgentRecord:
        record = self._owned(connection, agent_id)
        kind, ref = frame.get("type"), frame.get("ref")
        if ref is not None and ref == kind:  # "webrtc" named by its type: the one unnumbered channel
            ref = None
            frame = {k: v for k, v in frame.items() if k != "ref"}
        if kind not in CHANNEL_TYPES:
            raise RegistrationError(f"unknown channel type {kind!r}")
        if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= 128):
            raise RegistrationError("channel ref must be a non-empty string of at most 128 characters")
        if kind == "whatsapp" and not ref:
            raise RegistrationError("a whatsapp channel needs ref = the phone number id")
        channel_id = f"{kind}:{ref or ''}"
        if channel_id not in record.channels and len(record.channels) >= MAX_CHANNELS:
            raise RegistrationError(f"an agent has at most {MAX_CHANNELS} channels")
        for guard in self.channel_guards:
            await guard(record, str(kind), ref)
        if ref:
            holder = await self._store.claim_name(
                channel_name(str(kind), ref), agent_key(record.org_id, agent_id), self._settings.heartbeat_ttl
            )
            if holder is not None:
                raise RegistrationError(f"{kind} channel '{ref}' belongs to another agent")
        stored = {k: v for k, v in frame.items() if k not in ("event", "agent_id")}
        return await self._update(
            connection, replace(record, channels={**record.channels, channel_id: stored})
        )

    def channel_by_ref(self, connection: AgentConnection, agent_id: str, ref: object) -> Mapping[str, Any]:
        """The channel ``ref`` names on the agent, as added (the SDK's ``configureChannel(ref)``
        and ``removeChannel(ref)`` send the ref alone; for a channel without a number, webrtc
        or chat, the ref is its type)."""
        record = self._owned(connection, agent_id)
        if not isinstance(ref, str) or not ref:
            raise RegistrationError("a channel command needs a type or a ref")
        found = [
            stored
            for stored in record.channels.values()
            if stored.get("ref") == ref or (stored.get("type") == ref and not stored.get("ref"))
        ]
        if not found:
            raise ChannelNotFound(f"no channel {ref!r} on agent '{agent_id}'")
        if len(found) > 1:
            types = ", ".join(sorted(str(c.get("type")) for c in found))
            raise RegistrationError(f"ref {ref!r} names several channels ({types}); send its type too")
        return found[0]

    async def remove_channel(
        self, connection: AgentConnection, agent_id: str, kind: str, ref: str | None
    ) -> AgentRecord:
        record = self._owned(connection, agent_id)
        channel_id = f"{kind}:{ref or ''}"
        if channel_id not in record.channels:
            raise ChannelNotFound(f"no {kind} channel {ref or ''!r} on agent '{agent_id}'".replace(" ''", ""))
        channels = {k: v for k, v in record.channels.items() if k != channel_id}
        if ref:
            await self._store.release_name(channel_name(kind, ref), agent_key(record.org_id, agent_id))
        return await self._update(connection, replace(record, channels=channels))

    def withdraw_pending(self, connection: AgentConnection, agent_id: str) -> None:
        """Drop ``connection``'s pending registration of ``agent_id`` (a refused line does not
        take over later)."""
        key = agent_key(connection.org_id, agent_id)
        pending = self._pending.get(key)
        if pending is not None and pending.connection is connection:
            del self._pending[key]

    async def unregister(self, connection: AgentConnection, agent_id: str) -> AgentRecord:
        """Take one agent of ``connection`` offline (``line.destroy``); the socket goes on."""
        record = self._owned(connection, agent_id)
        del self._local[agent_key(record.org_id, agent_id)]
        await self._forget(record)
        return record

    async def disconnect(self, connection: AgentConnection) -> list[AgentRecord]:
        """The socket closed: every agent it held goes offline."""
        for key in [k for k, p in self._pending.items() if p.connection is connection]:
            del self._pending[key]
        gone = [record for conn, record in self._local.values() if conn is connection]
        for record in gone:
            del self._local[agent_key(record.org_id, record.agent_id)]
            await self._forget(record)
        return gone

    def release_local(
        self, org_id: str, agent_id: str, owner: str
    ) -> tuple[AgentConnection, AgentRecord] | None:
        """Take the agent off its socket here if ``owner`` still holds it (a displacement:
        ``DELETE /api/sdk/agents/{slug}``); the caller then ``release``s the record. The socket
        stays open with its other agents."""
        key = agent_key(org_id, agent_id)
        entry = self._local.get(key)
        if entry is None or entry[1].owner != owner:
            return None
        del self._local[key]
        return entry

    async def release(self, record: AgentRecord) -> None:
        """Take ``record`` out of the store (if its owner still holds it), its indexes with it,
        and tell every node it went offline; what a closing socket does for each of its agents."""
        await self._forget(record)

    async def _forget(self, record: AgentRecord) -> None:
        key = agent_key(record.org_id, record.agent_id)
        await self._changed(record)
        with contextlib.suppress(Exception):  # the heartbeat TTL cleans up if the store is down
            await self._store.release_agent(record.org_id, record.agent_id, record.owner)
            if record.allowed_origins:
                await self._store.release_name(public_name(record.agent_id), key)
            for channel in record.channels.values():
                if channel.get("ref"):
                    await self._store.release_name(channel_name(channel["type"], channel["ref"]), key)
            if self.relay is not None:  # sessions relayed from other nodes end there too
                await self.relay.invalidate("agent_offline", key)

    async def is_online(self, org_id: str, agent_id: str) -> bool:
        """Online anywhere, read from the store (not the cache)."""
        if self.local_connection(org_id, agent_id) is not None:
            return True
        return await self._store.get_agent(org_id, agent_id) is not None

    # -- lookups (mint, webhooks, sessions) -----------------------------------------------
    async def find(self, org_id: str, agent_id: str, shown_as: str | None = None) -> AgentRecord:
        key = agent_key(org_id, agent_id)
        record = self._cache.get(key)
        if record is None:
            # Single flight: when the record expires from the cache under load, the ~50 mints
            # and sessions in flight made ~50 identical reads (a thousand in a 20 s consume row).
            fetching = self._fetching.get(key)
            if fetching is None:
                fetching = asyncio.ensure_future(self._fetch(key, org_id, agent_id))
                self._fetching[key] = fetching
            record = await asyncio.shield(fetching)
            if record is None:
                raise AgentNotOnline(shown_as or agent_id)
        return record

    async def _fetch(self, key: str, org_id: str, agent_id: str) -> AgentRecord | None:
        try:
            record = await self._store.get_agent(org_id, agent_id)
            if record is not None and self._fetching.get(key) is asyncio.current_task():
                self._cache.put(key, record)  # unless the record was invalidated meanwhile
            return record
        finally:
            if self._fetching.get(key) is asyncio.current_task():
                del self._fetching[key]

    async def find_public(self, agent_id: str, shown_as: str | None = None) -> AgentRecord:
        """The agent published under ``agent_id`` by whichever org registered it with origins."""
        cached = self._cache.get("pub:" + agent_id)
        if cached is not None:
            return cached
        key = await self._store.lookup_name(public_name(agent_id))
        if key is not None:
            org_id, _, _ = key.partition("/")
            record = await self._store.get_agent(org_id, agent_id)
            if record is not None:
                self._cache.put("pub:" + agent_id, record)
                return record
        raise AgentNotOnline(shown_as or agent_id)

    async def online_anywhere(self, agent_id: str) -> bool:
        """Whether some org has ``agent_id`` online on some node (``agent-orgs:`` index, each org
        checked against its record). Only the key-less mint path asks, after ``find_public``
        failed: it is the difference between 403 agent_not_public and 404 agent_not_online."""
        for org_id in await self._store.index_members(agent_orgs_index(agent_id), self._listing_ttl):
            if await self._store.get_agent(org_id, agent_id) is not None:
                return True
        return False

    async def online_in_org(self, org_id: str) -> list[AgentRecord]:
        """Every online agent of ``org_id``, on every node, read from the store (``agents:``
        index, each id checked against its record), sorted by agent id."""
        ids = await self._store.index_members(org_index(org_id), self._listing_ttl)
        found: list[AgentRecord] = []
        for start in range(0, len(ids), LIST_CONCURRENCY):
            chunk = ids[start : start + LIST_CONCURRENCY]
            records = await asyncio.gather(*(self._store.get_agent(org_id, a) for a in chunk))
            found.extend(r for r in records if r is not None)
        return sorted(found, key=lambda r: r.agent_id)

    async def find_channel(self, kind: str, ref: str) -> AgentRecord | None:
        key = await self._store.lookup_name(channel_name(kind, ref))
        if key is None:
            return None
        org_id, _, agent_id = key.partition("/")
        return await self._store.get_agent(org_id, agent_id)

    def local_connection(self, org_id: str, agent_id: str) -> AgentConnection | None:
        entry = self._local.get(agent_key(org_id, agent_id))
        return entry[0] if entry else None

    async def send(self, org_id: str, agent_id: str, frame: Mapping[str, Any]) -> bool:
        """Write ``frame`` to the agent's socket, on this node or relayed to its owner node
        (CONTRACT §8); False when the agent is online nowhere."""
        if self.observe is not None:
            self.observe(org_id, agent_id, frame)
        if await self.send_local(org_id, agent_id, frame):
            return True
        if self.relay is None:
            return False
        try:
            record = await self._store.get_agent(org_id, agent_id)
        except VoiceError:
            return False
        if record is None or record.node_id == self._settings.node_id:
            return False
        return await self.relay.to_agent(record.node_id, org_id, agent_id, frame)

    async def held_elsewhere(self, org_id: str, agent_id: str) -> bool:
        """Whether the store names another node as the agent's owner (True when the store cannot
        say): a frame that reached nobody then met a node that is not listening right now (a
        Redis failover, a node that crashed and whose record has not expired), not an agent
        that went offline."""
        if self.relay is None:
            return False
        try:
            record = await self._store.get_agent(org_id, agent_id)
        except VoiceError:
            return True
        return record is not None and record.node_id != self._settings.node_id

    async def send_local(self, org_id: str, agent_id: str, frame: Mapping[str, Any]) -> bool:
        """Write ``frame`` to the agent's socket if it is on this node; False otherwise."""
        connection = self.local_connection(org_id, agent_id)
        if connection is None:
            return False
        await connection.send({**frame, "agent_id": agent_id})
        return True

    def local_agents(self) -> list[AgentRecord]:
        return [record for _, record in self._local.values()]
