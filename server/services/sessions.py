"""Live sessions (WebRTC, chat, WhatsApp) on this node: admission, lifecycle, limits.

Every transport subclasses :class:`Session` and lets :class:`SessionManager` do the common
part: limits on admission (per node, per org), ``call.started`` to the agent, idle and
maximum-duration limits (one node-wide watchdog), and exactly one
``call.ended {reason, duration_seconds}`` however the session ends (hangup, peer gone,
timeout, agent offline, shutdown). A session that is not admitted leaves nothing behind.

Admission in two steps: a transport that must do slow work between "is there room?" and
"admit" (consume a token, look the agent up) takes a :class:`Reservation` first. The
reservation holds a slot, so two sessions racing for the last one cannot both pass the check
and then one of them fail after its token was already spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.core.scopes import PARTICIPATE, Access
from server.errors import AgentNotOnline, CapacityExceeded, RateLimited, StoreUnavailable
from server.log import event
from server.services.agents import AgentRegistry
from server.services.calls import CallRouter
from server.services.session_control import CONTROL_EVENTS, control, held_back, mark_paused, refuse_paused
from server.store.base import AgentRecord

if TYPE_CHECKING:
    from server.services.journal import Journal

log = logging.getLogger("voice.sessions")
Clock = Callable[[], float]
CALL_INDEX_GRACE = 60.0  # the call index outlives the longest session by this much


INBOUND_BYTES_PER_SECOND = 32 * 1024


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int
    max_sessions_per_org: int
    max_seconds: float
    idle_seconds: float
    # What one browser may send towards its agent: bytes a second, with a burst of
    # INBOUND_BURST seconds' worth; each frame costs at least MIN_FRAME_COST (bounds frames too).
    inbound_bytes_per_second: int = INBOUND_BYTES_PER_SECOND


INBOUND_BURST = 8.0
MIN_FRAME_COST = 256


class InboundBudget:
    """A token bucket over the bytes one browser sends: a session past it gets its frames
    refused (``rate_limited``) instead of pushing them to the agent at wire speed."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._rate = rate
        self._burst = rate * INBOUND_BURST
        self._clock = clock
        self._level = self._burst
        self._at = clock()

    def spend(self, size: int) -> None:
        now = self._clock()
        self._level = min(self._burst, self._level + (now - self._at) * self._rate)
        self._at = now
        cost = max(size, MIN_FRAME_COST)
        if cost > self._level:
            wait = (cost - self._level) / self._rate
            raise RateLimited(
                f"too much input: a session may send {int(self._rate)} bytes a second; slow down",
                math.ceil(wait),
            )
        self._level -= cost


MAX_GREETING_CHARS = 4000


def greeting_of(agent_config: Mapping[str, Any], session_config: Mapping[str, Any]) -> str | None:
    """The greeting a new session opens with: the browser's session config may set one (CONTRACT
    §3), else the agent's ``agent.create`` config (the SDK README's first example has one)."""
    for config in (session_config, agent_config):
        greeting = config.get("greeting")
        if isinstance(greeting, str) and greeting.strip():
            return greeting.strip()[:MAX_GREETING_CHARS]
    return None


def greeting_frame(text: str) -> dict[str, Any]:
    """The greeting as the agent's own ``bot.reply`` would be (so it is spoken or streamed,
    confirmed to the agent and kept in the history the same way)."""
    return {"event": "bot.reply", "message_id": "greet_" + secrets.token_hex(8), "text": text}


def new_call_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Session:
    """One live conversation between a user and an agent. Subclasses implement the transport."""

    transport: str = "unknown"
    call_prefix: str = "call_"

    def __init__(self, org_id: str, agent_id: str, metadata: Mapping[str, Any] | None = None) -> None:
        self.org_id = org_id
        self.agent_id = agent_id
        self.call_id = new_call_id(self.call_prefix)
        self.session_id = "sess_" + secrets.token_hex(8)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.started_at = time.monotonic()
        self.last_activity = self.started_at
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self.manager: SessionManager | None = None
        self.indexed = False  # holds a call index entry in the store (relayed sessions)
        self._inbound: InboundBudget | None = None
        self.paused = False  # agent.pause(): services/session_control.py
        self.session_config: dict[str, Any] = {}  # agent.configureSession(id, {...})
        self.access = Access(PARTICIPATE)  # the token's scope; transports set it (core/scopes.py)

    def inbound(self, size: int) -> None:
        """Charge ``size`` bytes from the browser; RateLimited past the session's budget."""
        if self._inbound is None:
            manager = self.manager
            rate = (
                manager.limits.inbound_bytes_per_second if manager is not None else INBOUND_BYTES_PER_SECOND
            )
            self._inbound = InboundBudget(rate, manager.now if manager is not None else time.monotonic)
        self._inbound.spend(size)

    def trace(self, direction: str, frame: Any) -> None:
        """Note a frame in the session's timeline (inspection on only; audio as bytes is counted)."""
        manager = self.manager
        if manager is not None and manager.journal is not None:
            manager.journal.frame(self.call_id, direction, frame)

    def touch(self) -> None:
        """Something happened: the idle timer starts again."""
        self.last_activity = self.manager.now() if self.manager is not None else time.monotonic()

    def started_frame(self) -> dict[str, Any]:
        """The ``call.started`` frame for the agent (subclasses add transport fields)."""
        return {
            "event": "call.started",
            "call_id": self.call_id,
            "session_id": self.session_id,
            "from": "browser",
            "to": self.agent_id,
            "direction": "inbound",
            "transport": self.transport,
            "metadata": self.metadata,
            **self.scope_field(),
        }

    def scope_field(self) -> dict[str, str]:
        """``scope`` for the agent when the user only listens; absent for a participant, so the
        frames of a token minted without a scope stay as they were."""
        return {} if self.access.sends_input else {"scope": self.access.scope}

    def ended_frames(self, reason: str, duration_seconds: float) -> list[dict[str, Any]]:
        """What the agent gets when the session ends (subclasses may add transport events)."""
        return [
            {
                "event": "call.ended",
                "call_id": self.call_id,
                "reason": reason,
                "duration_seconds": duration_seconds,
            }
        ]

    async def send_to_agent(self, frame: Mapping[str, Any]) -> bool:
        """A per-call event to the agent (``call_id`` added)."""
        manager = self.manager
        if manager is None:
            return False
        if manager.journal is not None:
            manager.journal.frame(self.call_id, "server->agent", frame)
        return await manager.registry.send(
            self.org_id, self.agent_id, {**mark_paused(self, frame), "call_id": self.call_id}
        )

    async def on_agent_command(self, frame: Mapping[str, Any]) -> None:
        """A command from the agent for this call (``bot.reply``, ``call.hangup``, ``history.*``...)."""
        self.touch()
        if self.manager is not None and self.manager.journal is not None:
            self.manager.journal.frame(self.call_id, "agent->server", frame)
        if frame.get("event") == "call.hangup":
            await self.end("hangup")
            return
        if frame.get("event") in CONTROL_EVENTS:
            await control(self, frame)
            return
        if held_back(self, frame):
            await refuse_paused(self, frame)
            return
        await self.handle_command(frame)

    async def reconfigure(self, changes: Mapping[str, Any]) -> None:
        """``session.configure`` merged ``changes`` into :attr:`session_config`; a new language
        is told to the agent as ``call.updated`` (the SDK's Call then reports it)."""
        language = changes.get("language")
        if isinstance(language, str) and language:
            await self.send_to_agent({"event": "call.updated", "language": language})

    async def handle_command(self, frame: Mapping[str, Any]) -> None:
        """Transport-specific commands; the default tells the agent the command is unknown."""
        await self.send_to_agent(
            {
                "event": "error",
                "error": f"unsupported command {frame.get('event')!r}",
                "code": "UNSUPPORTED_COMMAND",
            }
        )

    async def on_timeout_warning(self, seconds_left: float) -> None:
        """Before an idle timeout ends the session (WebRTC sends ``session.idle_warning``)."""

    async def close_transport(self, reason: str) -> None:
        """Release the transport (peer connection, socket). Must not raise."""

    async def end(self, reason: str) -> None:
        """End the session once: close the transport, then ``call.ended`` to the agent."""
        if self.manager is not None:
            await self.manager.end(self, reason)


class Reservation:
    """One session slot held for ``org_id`` until :meth:`SessionManager.start` uses it or it is
    released. Use it as a context manager: leaving the block releases an unused slot."""

    def __init__(self, manager: SessionManager, org_id: str) -> None:
        self.manager = manager
        self.org_id = org_id
        self.active = True
        self.consumed: tuple[str, str] | None = None  # (jti, channel) of the token it was admitted with

    def release(self) -> None:
        if self.active:
            self.active = False
            self.manager._unreserve(self.org_id)
            journal = self.manager.journal
            if self.consumed is not None and journal is not None:  # consumed, but no session came of it
                jti, channel = self.consumed
                journal.note("consume.allowed", jti=jti, channel=channel, session_id=None)
            self.consumed = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class SessionManager:
    def __init__(
        self, registry: AgentRegistry, calls: CallRouter, limits: SessionLimits, clock: Clock = time.monotonic
    ) -> None:
        self.registry = registry
        self.calls = calls
        self.limits = limits
        self._clock = clock
        self._live: dict[str, Session] = {}
        self._per_org: Counter[str] = Counter()
        # One timer for the node, not a task per session (issue 11: 10,000 idle chat sockets
        # were 10,000 task wake-ups a second); the ends and warnings it starts are kept here.
        self._sweeper: asyncio.Task[None] | None = None
        self._swept: set[asyncio.Task[None]] = set()
        self._warned: set[str] = set()  # call ids warned of their idle timeout
        self._reserved: Counter[str] = Counter()  # org -> slots held by reservations
        self.accepting = True
        # While the node drains its agents move to other nodes, possibly while a session is
        # being admitted here: then every call is indexed, so the agent's commands still find it.
        self.index_every_call = False
        self._admitting: Counter[tuple[str, str]] = Counter()  # (org, agent) -> admissions under way
        # (org, agent) paused as a whole (agent.pause() with no session): new sessions start paused.
        self.paused_agents: set[tuple[str, str]] = set()
        self.journal: Journal | None = None  # set by the node when inspection is on

    def __len__(self) -> int:
        return len(self._live)

    def now(self) -> float:
        """The manager's clock (injected; monotonic by default): every session time uses it."""
        return self._clock()

    def live(self) -> list[Session]:
        return list(self._live.values())

    def count_by_transport(self) -> Counter[str]:
        return Counter(s.transport for s in self._live.values())

    def check_capacity(self, org_id: str) -> None:
        """Refuse when there is no room. Live sessions and held reservations both count.

        A check holds nothing: a transport that awaits anything before :meth:`start` (a consume,
        a lookup, a peer) takes a :meth:`reserve` instead (services/admission.py)."""
        if not self.accepting:
            raise CapacityExceeded("This server is shutting down; reconnect to start a new session")
        if len(self._live) + self._reserved.total() >= self.limits.max_sessions:
            raise CapacityExceeded(f"This server is at its session limit ({self.limits.max_sessions})")
        if self._per_org[org_id] + self._reserved[org_id] >= self.limits.max_sessions_per_org:
            raise CapacityExceeded(
                f"Your organisation is at its session limit ({self.limits.max_sessions_per_org})"
            )

    @contextlib.contextmanager
    def admitting(self, org_id: str, agent_id: str) -> Iterator[None]:
        """Mark a session of the agent as being admitted (a draining node must not let the
        agent go in the middle: :meth:`busy_agents`)."""
        key = (org_id, agent_id)
        self._admitting[key] += 1
        try:
            yield
        finally:
            self._admitting[key] -= 1
            if self._admitting[key] <= 0:
                del self._admitting[key]

    def admitting_any(self) -> bool:
        return bool(self._admitting)

    def busy_agents(self) -> set[tuple[str, str]]:
        """(org, agent) of every live session here, and of every session being admitted."""
        return {(s.org_id, s.agent_id) for s in self._live.values()} | set(self._admitting)

    def reserve(self, org_id: str) -> Reservation:
        """Hold a slot for ``org_id`` (CapacityExceeded if there is none) until ``start`` uses it."""
        self.check_capacity(org_id)
        self._reserved[org_id] += 1
        return Reservation(self, org_id)

    def _unreserve(self, org_id: str) -> None:
        self._reserved[org_id] -= 1
        if self._reserved[org_id] <= 0:
            del self._reserved[org_id]

    async def start(self, session: Session, reservation: Reservation | None = None) -> None:
        """Admit ``session``: register it, tell its agent (``call.started``), arm the watchdogs.

        With an active ``reservation`` for the session's org the slot it holds is used and the
        capacity is not checked again; without one, CapacityExceeded when there is no room."""
        journal = self.journal
        if journal is not None and reservation is not None and reservation.consumed is not None:
            jti, channel = reservation.consumed
            reservation.consumed = None
            journal.note("consume.allowed", jti=jti, channel=channel, session_id=session.call_id)
        if reservation is None or not reservation.active or reservation.org_id != session.org_id:
            reservation = self.reserve(session.org_id)  # CapacityExceeded when there is no room
        elif not self.accepting:
            reservation.release()
            raise CapacityExceeded("This server is shutting down; reconnect to start a new session")
        with reservation:  # the slot stays held across the await below, then becomes the session's
            relay = self.registry.relay
            local = self.registry.local_connection(session.org_id, session.agent_id) is not None
            if relay is not None and (not local or self.index_every_call):
                # The agent's socket is on another node: the call index tells that node where to
                # relay its commands (CONTRACT §8). Claimed before anything is registered, so a
                # store failure leaves nothing behind. A local agent's commands arrive here, so a
                # local session needs no index (and saves two store round trips).
                await relay.claim_call(session.call_id, self.limits.max_seconds + CALL_INDEX_GRACE)
                session.indexed = True
        session.manager = self
        session.paused = session.paused or (session.org_id, session.agent_id) in self.paused_agents
        session.started_at = session.last_activity = self._clock()
        self._live[session.call_id] = session
        self._per_org[session.org_id] += 1
        self.calls.add(session)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="session-watchdog")
        started = session.started_frame()
        if not await self.registry.send(session.org_id, session.agent_id, started):
            # The agent never heard of the session: refused, not left open with no agent to
            # answer. Online by its record on a node that is not listening (a Redis failover, a
            # crashed node whose record has not expired yet): try again, as for the store.
            await self._discard(session)
            if await self.registry.held_elsewhere(session.org_id, session.agent_id):
                raise StoreUnavailable(
                    f"Agent '{session.agent_id}' is on a node that did not answer; try again"
                )
            raise AgentNotOnline(session.agent_id)
        if journal is not None:
            journal.note(
                "session.start",
                call_id=session.call_id,
                transport=session.transport,
                agent_id=session.agent_id,
                org=session.org_id,
            )
            journal.frame(session.call_id, "server->agent", started)
        event(
            log,
            "session started",
            call_id=session.call_id,
            org_id=session.org_id,
            agent_id=session.agent_id,
            transport=session.transport,
        )

    async def _discard(self, session: Session) -> None:
        """Undo :meth:`start` for a session its agent never heard of: no ``call.ended``, and the
        transport is left to the caller, which refuses it."""
        del self._live[session.call_id]
        self._per_org[session.org_id] -= 1
        if self._per_org[session.org_id] <= 0:
            del self._per_org[session.org_id]
        self.calls.remove(session)
        self._warned.discard(session.call_id)
        if session.indexed and self.registry.relay is not None:
            with contextlib.suppress(Exception):  # the index expires on its own if the store is down
                await self.registry.relay.release_call(session.call_id)
        session.manager = None

    async def end(self, session: Session, reason: str) -> None:
        if session.end_reason is not None or session.call_id not in self._live:
            return
        session.end_reason = reason
        if self.journal is not None:
            self.journal.note("session.end", call_id=session.call_id, reason=reason)
        del self._live[session.call_id]
        self._per_org[session.org_id] -= 1
        if self._per_org[session.org_id] <= 0:
            del self._per_org[session.org_id]
        self.calls.remove(session)
        if session.indexed and self.registry.relay is not None:
            with contextlib.suppress(Exception):  # the index expires on its own if the store is down
                await self.registry.relay.release_call(session.call_id)
        self._warned.discard(session.call_id)
        try:
            await session.close_transport(reason)
        except Exception:
            log.exception("closing the transport of %s failed", session.call_id)
        duration = round(self._clock() - session.started_at, 3)
        with contextlib.suppress(Exception):
            for frame in session.ended_frames(reason, duration):
                if self.journal is not None:
                    self.journal.frame(session.call_id, "server->agent", frame)
                await self.registry.send(session.org_id, session.agent_id, frame)
        session.ended.set()
        event(log, "session ended", call_id=session.call_id, reason=reason, duration_seconds=duration)

    async def _sweep(self) -> None:
        """Every idle/20 seconds (at most 1 s), end what is past its limits and warn what nears
        its idle timeout; runs while sessions are live. Ends and warnings run as tasks of their
        own, so a slow close does not hold up the sweep."""
        limits = self.limits
        while self._live:
            await asyncio.sleep(min(1.0, max(0.05, limits.idle_seconds / 20)))
            now = self._clock()
            for session in list(self._live.values()):
                if session.end_reason is not None:
                    continue
                idle = now - session.last_activity
                if now - session.started_at >= limits.max_seconds:
                    self._spawn(self.end(session, "max_duration"))
                elif idle >= limits.idle_seconds:
                    self._spawn(self.end(session, "idle_timeout"))
                elif idle >= limits.idle_seconds * 0.8:
                    if session.call_id not in self._warned:
                        self._warned.add(session.call_id)
                        self._spawn(self._warn(session, limits.idle_seconds - idle))
                else:
                    self._warned.discard(session.call_id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._swept.add(task)
        task.add_done_callback(self._swept.discard)

    @staticmethod
    async def _warn(session: Session, seconds_left: float) -> None:
        with contextlib.suppress(Exception):
            await session.on_timeout_warning(seconds_left)

    async def agent_offline(self, record: AgentRecord) -> None:
        """The agent's /client socket closed: its sessions on this node end."""
        for session in self.live():
            if session.org_id == record.org_id and session.agent_id == record.agent_id:
                await self.end(session, "agent_offline")

    async def shutdown(self, grace: float) -> None:
        """Stop admitting, let live sessions run up to ``grace`` seconds, then end the rest."""
        self.accepting = False
        if self._live and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.ended.wait() for s in self.live())), grace)
        for session in self.live():
            await self.end(session, "server_shutdown")
        if self._sweeper is not None:
            self._sweeper.cancel()
