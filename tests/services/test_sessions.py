"""Session limits and lifecycle: the SessionManager in-process, then the limits end to end on a
real server with short configured timeouts (VOICE_MAX_SESSIONS[_PER_ORG],
VOICE_SESSION_IDLE_SECONDS, VOICE_SESSION_MAX_SECONDS, VOICE_CHAT_REPLY_SECONDS)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from server.errors import AgentNotOnline, CapacityExceeded
from server.services.agents import AgentRegistry, RegistrySettings
from server.services.calls import CallRouter
from server.services.sessions import Session, SessionLimits, SessionManager
from server.store import MemoryStore
from tests.conftest import FakeClock
from tests.realtime.test_chat_ws import (
    BASE_ENV,
    OTHER_KEY,
    agent_name,
    chat_url,
    closed_with,
    mint,
    online,
    open_chat,
    recv,
    refused,
)
from tests.support.procs import running_server


# -- in-process ---------------------------------------------------------------------------------
class Recorder:
    """An agent's /client socket, seen from the registry: it records what the agent is sent."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self.conn_id = "rec"
        self.frames: list[dict[str, Any]] = []

    async def send(self, frame: Mapping[str, Any]) -> None:
        self.frames.append(dict(frame))


class Transport(Session):
    """The smallest transport: it records how it was closed."""

    transport = "test"
    call_prefix = "tst_"

    def __init__(self, org_id: str, agent_id: str) -> None:
        super().__init__(org_id, agent_id)
        self.closed_with: list[str] = []

    async def close_transport(self, reason: str) -> None:
        self.closed_with.append(reason)


@pytest.fixture
async def world() -> AsyncIterator[tuple[SessionManager, Recorder]]:
    store = MemoryStore()
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 10.0))
    recorder = Recorder("acme")
    await registry.register(recorder, "bot", {}, None)
    manager = SessionManager(registry, CallRouter(), SessionLimits(3, 2, 3600.0, 3600.0))
    yield manager, recorder
    await manager.shutdown(grace=0)
    await registry.stop()
    await store.aclose()


async def test_a_session_ends_exactly_once_with_one_call_ended(
    world: tuple[SessionManager, Recorder],
) -> None:
    manager, recorder = world
    session = Transport("acme", "bot")
    await manager.start(session)
    assert recorder.frames[0]["event"] == "call.started" and manager.calls.get(session.call_id, "acme")
    await session.end("hangup")
    await session.end("idle_timeout")
    await manager.agent_offline(manager.registry.local_agents()[0])
    ended = [f for f in recorder.frames if f["event"] == "call.ended"]
    assert len(ended) == 1 and ended[0]["reason"] == "hangup" and session.closed_with == ["hangup"]
    assert len(manager) == 0 and manager.calls.get(session.call_id, "acme") is None


async def test_a_reservation_holds_a_slot_until_used_or_released(
    world: tuple[SessionManager, Recorder],
) -> None:
    manager, _ = world
    first = manager.reserve("acme")
    second = manager.reserve("acme")
    with pytest.raises(CapacityExceeded):
        manager.reserve("acme")  # the org's two slots are held
    with pytest.raises(CapacityExceeded):
        await manager.start(Transport("acme", "bot"))
    await manager.start(Transport("acme", "bot"), first)  # uses its slot without a re-check
    second.release()
    second.release()  # idempotent
    with manager.reserve("acme"):
        pass  # leaving the block gives the slot back
    assert len(manager) == 1
    await manager.start(Transport("acme", "bot"))
    with pytest.raises(CapacityExceeded):
        manager.check_capacity("acme")


async def test_the_node_limit_counts_every_org(world: tuple[SessionManager, Recorder]) -> None:
    manager, _ = world
    held = [manager.reserve("acme"), manager.reserve("globex"), manager.reserve("initech")]
    with pytest.raises(CapacityExceeded, match="session limit"):
        manager.reserve("umbrella")
    for reservation in held:
        reservation.release()
    manager.reserve("umbrella").release()


async def test_shutdown_refuses_new_sessions(world: tuple[SessionManager, Recorder]) -> None:
    manager, _ = world
    session = Transport("acme", "bot")
    await manager.start(session)
    await manager.shutdown(grace=0)
    assert session.end_reason == "server_shutdown"
    with pytest.raises(CapacityExceeded, match="shutting down"):
        manager.check_capacity("acme")


async def test_a_session_whose_start_reaches_no_agent_is_undone(
    world: tuple[SessionManager, Recorder],
) -> None:
    """Found by scripts/chaos: a crashed node's agent record outlives it, and a session for that
    agent used to stay live with its call.started delivered nowhere. Now start refuses it and
    leaves nothing behind: no live session, no call index, its slot free, no call.ended."""
    manager, recorder = world
    session = Transport("acme", "ghost")  # online nowhere this registry can reach
    with pytest.raises(AgentNotOnline):
        await manager.start(session)
    assert len(manager) == 0 and manager.calls.get(session.call_id, "acme") is None
    assert session.manager is None and session.closed_with == [] and recorder.frames == []
    with manager.reserve("acme"), manager.reserve("acme"):
        pass  # both of the org's slots are free again


# -- end to end ---------------------------------------------------------------------------------
async def test_an_idle_chat_ends_with_idle_timeout() -> None:
    with running_server({**BASE_ENV, "VOICE_SESSION_IDLE_SECONDS": "0.6"}) as server:
        name = agent_name()
        sdk = await online(server, name)
        ws, _ = await open_chat(server, await mint(server, name))
        call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
        ended = await sdk.wait_for("call.ended", timeout=10)
        assert ended["call_id"] == call_id and ended["reason"] == "idle_timeout"
        assert await closed_with(ws) == (1000, "idle_timeout")
        await sdk.close()


async def test_a_busy_chat_still_ends_at_its_maximum_duration() -> None:
    env = {**BASE_ENV, "VOICE_SESSION_MAX_SECONDS": "1", "VOICE_SESSION_IDLE_SECONDS": "60"}
    with running_server(env) as server:
        name = agent_name()
        sdk = await online(server, name)
        ws, _ = await open_chat(server, await mint(server, name))
        await sdk.wait_for("llm.chat.started")
        for _ in range(200):  # activity keeps the idle timer away, never the duration limit
            await ws.send(json.dumps({"event": "set_context", "key": "k", "value": 1}))
            ended = None
            try:
                ended = await sdk.wait_for("call.ended", timeout=0.05)
            except TimeoutError:
                continue
            break
        assert ended is not None and ended["reason"] == "max_duration"
        assert await closed_with(ws) == (1000, "max_duration")
        await sdk.close()


async def test_the_per_org_limit_refuses_without_spending_the_token() -> None:
    with running_server({**BASE_ENV, "VOICE_MAX_SESSIONS_PER_ORG": "1"}) as server:
        name = agent_name()
        sdk = await online(server, name)
        ws, _ = await open_chat(server, await mint(server, name))
        await sdk.wait_for("llm.chat.started")
        waiting = await mint(server, name)
        assert await refused(chat_url(server, waiting)) == (1013, "at_capacity")
        await ws.close()
        await sdk.wait_for("llm.chat.ended")
        again, _ = await open_chat(server, waiting)  # the refused token was not consumed
        started = await sdk.recv()
        assert started["event"] == "llm.chat.started", "the refusal left nothing behind at the agent"
        await again.close()
        await sdk.close()


async def test_the_node_limit_refuses_other_orgs_too() -> None:
    with running_server({**BASE_ENV, "VOICE_MAX_SESSIONS": "1"}) as server:
        name, other = agent_name(), agent_name()
        sdk = await online(server, name)
        sdk_other = await online(server, other, key=OTHER_KEY)
        ws, _ = await open_chat(server, await mint(server, name))
        token = await mint(server, other, key=OTHER_KEY)
        assert await refused(chat_url(server, token)) == (1013, "at_capacity")
        await ws.close()
        await sdk.wait_for("llm.chat.ended")
        later, _ = await open_chat(server, token)
        await later.close()
        await sdk.close()
        await sdk_other.close()


async def test_an_unanswered_turn_ends_in_chat_error() -> None:
    """The browser keeps its input locked until chat.done or chat.error: a silent agent must
    not lock it forever."""
    with running_server({**BASE_ENV, "VOICE_CHAT_REPLY_SECONDS": "0.3"}) as server:
        name = agent_name()
        sdk = await online(server, name)
        ws, _ = await open_chat(server, await mint(server, name))
        call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
        await ws.send(json.dumps({"event": "message", "text": "anyone there?"}))
        await sdk.wait_for("chat.message")
        error = await recv(ws, timeout=10)
        assert error == {
            "event": "chat.error",
            "error": "The agent did not reply in time",
            "code": "reply_timeout",
        }
        await ws.send(json.dumps({"event": "message", "text": "hello?"}))  # the next turn is open again
        await sdk.wait_for("chat.message")
        await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "m", "text": "sorry"})
        while (frame := await recv(ws))["event"] != "chat.done":
            assert frame["event"] == "chat.token"
        await asyncio.wait_for(ws.close(), 5)
        await sdk.close()


async def _ended(session: Session) -> None:
    await asyncio.wait_for(session.ended.wait(), 5)  # the watchdog ticks every idle/20 real seconds


async def test_idle_and_max_duration_follow_the_injected_clock(clock: FakeClock) -> None:
    """Timeouts are judged on the manager's clock: moving it ends sessions, no waiting for them."""
    store = MemoryStore()
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 10.0))
    recorder = Recorder("acme")
    await registry.register(recorder, "bot", {}, None)
    manager = SessionManager(registry, CallRouter(), SessionLimits(3, 3, 100.0, 2.0), clock=clock)
    idle, busy = Transport("acme", "bot"), Transport("acme", "bot")
    await manager.start(idle)
    await manager.start(busy)
    clock.advance(1.9)
    busy.touch()
    await asyncio.sleep(0.3)  # a few watchdog ticks: nobody is idle yet
    assert idle.end_reason is None and busy.end_reason is None
    clock.advance(0.2)
    await _ended(idle)
    assert idle.end_reason == "idle_timeout" and busy.end_reason is None
    for _ in range(60):  # active, but past its maximum duration
        clock.advance(1.7)
        busy.touch()
    await _ended(busy)
    assert busy.end_reason == "max_duration"
    ended = {f["call_id"]: f for f in recorder.frames if f["event"] == "call.ended"}
    assert ended[idle.call_id]["duration_seconds"] == pytest.approx(2.1)
    await manager.shutdown(grace=0)
    await registry.stop()
    await store.aclose()


async def test_one_watchdog_serves_every_session_and_warns_once(clock: FakeClock) -> None:
    """200 sessions are watched by one node-wide task (a task per session was 10,000 wake-ups
    a second with 10,000 idle chats); the idle warning comes once per idle spell."""
    store = MemoryStore()
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 10.0))
    await registry.register(Recorder("acme"), "bot", {}, None)
    manager = SessionManager(registry, CallRouter(), SessionLimits(300, 300, 100.0, 2.0), clock=clock)
    sessions = [Transport("acme", "bot") for _ in range(200)]
    warnings: list[float] = []

    async def warn(seconds_left: float) -> None:
        warnings.append(seconds_left)

    sessions[0].on_timeout_warning = warn  # type: ignore[method-assign]
    for session in sessions:
        await manager.start(session)
    watchers = [t for t in asyncio.all_tasks() if t.get_name() in ("session-watchdog",)]
    assert len(watchers) == 1 and not [t for t in asyncio.all_tasks() if t.get_name().startswith("watch-")]
    clock.advance(1.7)  # past 80 % of the 2 s idle limit
    for session in sessions[1:]:
        session.touch()
    await asyncio.sleep(0.35)  # several sweeps
    assert len(warnings) == 1 and all(s.end_reason is None for s in sessions)
    clock.advance(0.4)
    await _ended(sessions[0])
    assert sessions[0].end_reason == "idle_timeout" and sessions[1].end_reason is None
    await manager.shutdown(grace=0)
    assert all(s.end_reason == "server_shutdown" for s in sessions[1:])
    await asyncio.sleep(0)
    assert watchers[0].done()
    await registry.stop()
    await store.aclose()
