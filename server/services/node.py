"""Everything one server process holds, opened and closed together by the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.core.clock import ShiftedClock
from server.core.tokens import TokenCodec
from server.core.wire import error_frame
from server.errors import InvalidApiKey, VoiceError
from server.metrics import Metrics
from server.services.agents import AgentRegistry, RegistrySettings
from server.services.authority import Authority
from server.services.calls import CallRouter
from server.services.events import CHANNEL as EVENTS_CHANNEL
from server.services.events import EventLog
from server.services.faults import FaultBoard
from server.services.handoff import Handoff
from server.services.journal import CHANNEL as JOURNAL_CHANNEL
from server.services.journal import Journal
from server.services.keys import KeyService
from server.services.mock_agent import MockAgent
from server.services.presence import NodePresence
from server.services.relay import Relay
from server.services.sessions import SessionLimits, SessionManager
from server.services.whatsapp import WhatsAppService
from server.settings import Settings
from server.store import Store, open_store
from server.store.base import AgentRecord, agent_key

log = logging.getLogger("voice.node")
STRAGGLER_SECONDS = 2.0  # a draining node still admits sessions minted just before its notice


@dataclass
class Node:
    settings: Settings
    store: Store
    keys: KeyService
    authority: Authority
    registry: AgentRegistry
    calls: CallRouter
    sessions: SessionManager
    relay: Relay
    metrics: Metrics
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    connections: set[Any] = field(default_factory=set)  # live /client sockets
    on_agent_offline: list[Callable[[AgentRecord], Awaitable[None]]] = field(default_factory=list)
    background: set[asyncio.Task[None]] = field(default_factory=set)  # timers (a rotated key's end)
    leaving: set[tuple[str, str]] = field(default_factory=set)  # (org, agent) a drain let go
    # Run at shutdown after every session has ended (e.g. close WebRTC peers still mid-offer).
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    events: EventLog | None = None  # what WS /ws/stream reads (set by open)
    handoff: Handoff = field(init=False)  # where mints send browsers while a node drains
    presence: NodePresence | None = None  # one live process per VOICE_NODE_ID
    mock_agent: MockAgent | None = None  # VOICE_MOCK_AGENT (dev mode: agent "demo")
    whatsapp: WhatsAppService = field(init=False)  # webhooks and conversations (CONTRACT §7)
    journal: Journal | None = None  # the inspection journal; None when VOICE_INSPECT is off
    faults: FaultBoard | None = None  # injected faults (/_voice/faults); None when off
    # Token expiry and the journal read wall_clock, session timers mono_clock; POST /_voice/clock
    # shifts both (services/inspector.py). Off, their offset stays 0.
    wall_clock: ShiftedClock = field(default_factory=ShiftedClock)
    mono_clock: ShiftedClock = field(default_factory=lambda: ShiftedClock(time.monotonic))

    @classmethod
    async def open(cls, settings: Settings, store: Store | None = None) -> Node:
        store = store if store is not None else open_store(settings.store_url)
        await store.start()
        # Before the registry: it takes back agents recorded under this node id.
        presence = NodePresence(store, settings.node_id, settings.agent_heartbeat_ttl)
        try:
            await presence.start()
        except BaseException:
            await store.aclose()
            raise
        keys = KeyService(store, cache_seconds=settings.cache_seconds, bus=store)
        keys.configure(settings.bootstrap_keys)
        registry = AgentRegistry(
            store,
            RegistrySettings(
                settings.node_id, settings.public_url, settings.agent_heartbeat_ttl, settings.cache_seconds
            ),
        )
        relay = Relay(store, settings.node_id)
        registry.relay = relay
        relay.agent_sink = registry.send_local
        relay.on_invalidate.append(
            lambda kind, key: (
                keys.forget(key.partition("@")[0])
                if kind in ("key", "key_expires")
                else registry.forget_cached(key)
            )
        )
        await relay.start()
        await registry.start()
        metrics = Metrics()
        store.observe_round_trips(metrics.store_latency.observe)
        wall_clock, mono_clock = ShiftedClock(), ShiftedClock(time.monotonic)
        # Off, the hot paths keep the builtin clocks: not even a Python call is added to them.
        inspect = settings.inspect
        authority = Authority(
            TokenCodec(settings.token_secrets),
            store,
            settings.token_ttl,
            clock=wall_clock if inspect else time.time,
            metrics=metrics,
        )
        calls = CallRouter()
        limits = SessionLimits(
            settings.max_sessions,
            settings.max_sessions_per_org,
            settings.session_max_seconds,
            settings.session_idle_seconds,
            settings.session_inbound_bytes,
        )
        sessions = SessionManager(registry, calls, limits, clock=mono_clock if inspect else time.monotonic)
        node = cls(
            settings,
            store,
            keys,
            authority,
            registry,
            calls,
            sessions,
            relay,
            metrics,
            presence=presence,
            wall_clock=wall_clock,
            mono_clock=mono_clock,
        )
        if inspect:
            journal = node.journal = Journal(
                store, settings.node_id, settings.inspect_journal_max, wall_clock
            )
            authority.journal = sessions.journal = journal
            relay.listen(JOURNAL_CHANNEL, journal.on_bus)
            journal.start()
            node.faults = authority.faults = FaultBoard(store, journal, wall_clock, relay.invalidate)
        metrics.watch(node.live_metrics)
        relay.call_sink = node.deliver_command
        relay.on_invalidate.append(node.agent_gone_elsewhere)
        events = node.events = EventLog(store, settings.stream_retention, settings.stream_retention_seconds)
        events.publish = store.publish
        registry.observe = events.record
        relay.listen(EVENTS_CHANNEL, events.on_bus)
        events.start()
        relay.on_invalidate.append(node.key_revoked)
        relay.on_invalidate.append(node.key_expiring)
        node.handoff = Handoff(settings.node_id, settings.public_url)
        relay.on_invalidate.append(node.handoff.on_notice)
        with contextlib.suppress(VoiceError):  # a restart under the same id: no longer draining
            await relay.invalidate("ready", settings.node_id)
        node.on_agent_offline.append(sessions.agent_offline)
        node.whatsapp = WhatsAppService(settings, store, registry, calls)
        if node.faults is not None:
            node.whatsapp.graph.before_send = node.faults.graph_fault
            node.whatsapp.conversations.journal = node.journal
        await node.whatsapp.start()
        registry.on_online.append(node.whatsapp.agent_online)  # drains messages queued while offline
        registry.channel_guards.append(node.whatsapp.guard_channel)
        node.on_agent_offline.append(node.whatsapp.agent_offline)
        if settings.mock_agent:
            node.mock_agent = await node.start_mock_agent()
        return node

    async def start_mock_agent(self) -> MockAgent | None:
        """Bring the built-in mock agent online; another node of the deployment may hold it already."""
        settings = self.settings
        agent = MockAgent(
            self.registry,
            self.deliver_command,
            org_id=settings.mock_agent_org,
            agent_id=settings.mock_agent,
            origins=settings.mock_agent_origins,
            greeting=settings.mock_agent_greeting,
        )
        try:
            return await agent.start()
        except VoiceError as exc:
            log.warning("mock agent %s not started: %s", settings.mock_agent, exc.detail)
            return None

    async def drain(self, grace: float, poll: float = 0.2) -> None:
        """Leave the deployment gently (SIGTERM): refuse new SDK connections (``/readyz`` turns
        503), tell every node to send browsers elsewhere (services/handoff.py), hand idle agents
        to other nodes at once, let live sessions run up to ``grace`` seconds, end the rest with
        ``call.ended``, then close every SDK socket.

        An SDK socket is closed (1012, "server draining": the SDK reconnects, through the load
        balancer, to another node) as soon as none of its agents has a live session here, so new
        mints place those agents elsewhere while busy agents finish their calls. For the first
        :data:`STRAGGLER_SECONDS` new sessions are still admitted: their tokens were minted
        before the other nodes heard of the drain, and the browser is already on its way here.
        """
        self.draining = True
        self.sessions.index_every_call = True
        self.handoff.on_notice("draining", self.settings.node_id)
        with contextlib.suppress(VoiceError):  # other nodes stop sending browsers here
            await self.relay.invalidate("draining", self.settings.node_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + grace
        while True:
            if loop.time() - started >= min(STRAGGLER_SECONDS, grace):
                self.sessions.accepting = False
            await self._release_idle_connections()
            # Done when no SDK socket is left, the straggler window is over and no session is
            # half admitted (one waiting for its agent to register elsewhere finishes first).
            settled = not self.sessions.accepting and not self.sessions.admitting_any()
            if (not self.connections and settled) or loop.time() >= deadline:
                break
            await asyncio.sleep(poll)
        await self.sessions.shutdown(grace=0)  # what is left gets call.ended(server_shutdown)
        for connection in list(self.connections):
            await connection.close(1012, "server draining")

    async def _release_idle_connections(self) -> None:
        for connection in list(self.connections):
            held = [
                r
                for r in self.registry.local_agents()
                if self.registry.local_connection(r.org_id, r.agent_id) is connection
            ]
            # Decided and marked with no await in between: a session admitted from here on
            # waits for the agent to register elsewhere (``left_here``); one admitted before is
            # in ``busy_agents`` and keeps the socket here until it ends.
            busy = self.sessions.busy_agents()
            if any((r.org_id, r.agent_id) in busy for r in held):
                continue
            for record in held:  # mints wait for these to register on a live node
                self.leaving.add((record.org_id, record.agent_id))
                key = agent_key(record.org_id, record.agent_id)
                self.handoff.on_notice("moving", key)
                with contextlib.suppress(VoiceError):
                    await self.relay.invalidate("moving", key)
            await connection.close(1012, "server draining")
            self.connections.discard(connection)

    def left_here(self, record: AgentRecord) -> bool:
        """A record of an agent this draining node let go (or is letting go): stale; the agent
        is moving to another node."""
        return record.node_id == self.settings.node_id and (record.org_id, record.agent_id) in self.leaving

    def live_metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Live state for /metrics, read at scrape time."""
        wa = self.whatsapp
        verdicts = [({"verdict": "unsigned_accepted"}, float(wa.unsigned_accepted))]
        verdicts += [({"verdict": "duplicate"}, float(wa.duplicates))]
        verdicts += [
            ({"verdict": "refused_" + reason.replace(" ", "_")}, float(n)) for reason, n in wa.refused.items()
        ]
        events = self.events
        return {
            "voice_sessions_live": [
                ({"transport": t}, float(n)) for t, n in self.sessions.count_by_transport().items()
            ],
            "voice_agents_online": [({}, float(len(self.registry.local_agents())))],
            "voice_sdk_connections": [({}, float(len(self.connections)))],
            "voice_draining": [({}, 1.0 if self.draining else 0.0)],
            "voice_webhook_verdicts": verdicts,
            "voice_streams_live": [({}, float(events.streams if events else 0))],
            "voice_stream_events_dropped": [({}, float(events.dropped if events else 0))],
        }

    async def connection_closed(self, connection: Any) -> list[AgentRecord]:
        """A /client socket is gone (or is being closed by us): its agents go offline, once."""
        self.connections.discard(connection)
        gone = await self.registry.disconnect(connection)
        for hook in self.on_agent_offline:
            for record in gone:
                await hook(record)
        return gone

    async def key_expiring(self, kind: str, key: str) -> None:
        """A rotated key's grace ends at a given time: its /client sockets close then, here."""
        if kind != "key_expires":
            return
        key_id, _, at = key.partition("@")
        try:
            delay = max(0.0, float(at) - time.time())
        except ValueError:
            return
        task = asyncio.create_task(self._expire(key_id, delay), name=f"key-expires-{key_id}")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _expire(self, key_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.key_revoked("key", key_id)

    async def key_revoked(self, kind: str, key: str) -> None:
        """An API key was revoked (on any node, or by the CLI): the /client sockets that
        authenticated with it close here, and their agents go offline at once, so nothing can
        register or mint through a socket opened before the revoke (issue 15)."""
        if kind != "key":
            return
        revoked = InvalidApiKey("API key revoked")
        for connection in [c for c in self.connections if getattr(c, "key_id", "") == key]:
            await connection.send(error_frame(revoked.detail, revoked.frame_code))
            await self.connection_closed(connection)
            await connection.close(revoked.ws_close_code, revoked.code)
            log.warning("closed a /client socket whose API key was revoked (key %s)", key)

    async def agent_gone_elsewhere(self, kind: str, key: str) -> None:
        """An agent went offline on some node: sessions relayed from here to it end too."""
        if kind != "agent_offline":
            return
        org_id, _, agent_id = key.partition("/")
        if not any(s.org_id == org_id and s.agent_id == agent_id for s in self.sessions.live()):
            return
        if await self.registry.is_online(org_id, agent_id):
            return  # it came back (or moved) in the meantime
        gone = AgentRecord(org_id=org_id, agent_id=agent_id, owner="", node_id="", node_url="")
        await self.sessions.agent_offline(gone)

    async def deliver_command(self, org_id: str, call_id: str, frame: Mapping[str, Any]) -> bool:
        """An agent's command for ``call_id``: to the session here, or relayed to its node."""
        handler = self.calls.get(call_id, org_id)
        if handler is not None:
            if self.events is not None:
                self.events.record(org_id, handler.agent_id, frame)
            await handler.on_agent_command(frame)
            return True
        return await self.relay.to_call(org_id, call_id, frame)

    async def command_call(self, org_id: str, agent_id: str, call_id: str, frame: Mapping[str, Any]) -> bool:
        """A command for ``call_id`` from somewhere other than its agent (a supervising stream):
        like :meth:`deliver_command`, and also to the agent's node, where a session sits unindexed
        when its agent is local to it."""
        if await self.deliver_command(org_id, call_id, frame):
            return True
        record = await self.registry.find(org_id, agent_id)
        if record.node_id == self.settings.node_id:
            return False
        return await self.relay.to_call_on(record.node_id, org_id, call_id, frame)

    async def aclose(self) -> None:
        for task in list(self.background):
            task.cancel()
        if self.mock_agent is not None:
            await self.mock_agent.stop()
        await self.whatsapp.aclose()
        await self.sessions.shutdown(grace=0)
        for hook in self.on_shutdown:
            await hook()
        await self.registry.stop()
        if self.events is not None:
            await self.events.stop()
        if self.journal is not None:
            await self.journal.stop()
        await self.relay.stop()
        if self.presence is not None:
            await self.presence.stop()
        await self.store.aclose()
