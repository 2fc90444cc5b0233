"""Issue 18 item 1: the SDK's bring-your-own-LLM pattern, ``agent.on("turn.end", ...)``, on a real
server process, on chat and on voice (an aiortc peer as the browser).

The agent side is the SDK README's example (an agent with a ``greeting`` whose ``turn.end``
handler answers with ``call.reply("I heard: " + turn.text)``), run by :class:`SdkAgent`, which
keeps the SDK 0.14's per-call turn state from the raw wire fields exactly as its dispatch
handlers do (pinecall/sdk src/dispatch/handlers/{speech,turn,chat}.ts and domain/call.ts):
a frame without ``agent_id`` and ``call_id`` of a known call is dropped, and the Turn is
``{id: turn_id, messageId: message_id || lastMessageId, text: text || lastTurnText,
confidence: <from the last user.message>, probability, latencyMs: latency_ms}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets

from tests.realtime.peer import BrowserPeer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_turn_end_0123456789abcdef"
GREETING = "Hello! How can I help?"
TURN_EVENTS = ("eager.turn", "user.message", "turn.end")


@dataclass
class Call:
    """The SDK's Call, as far as turns go (domain/call.ts)."""

    call_id: str
    transport: str
    last_message_id: str = ""
    last_turn_text: str = ""
    last_turn_confidence: float = 0.0
    turns: list[dict[str, Any]] = field(default_factory=list)
    eager: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # turn-related event names, in order


class SdkAgent:
    """One agent on /client, answering every ``turn.end`` through its Call as the README does."""

    def __init__(self, sdk: SdkClient, agent_id: str) -> None:
        self.sdk, self.agent_id = sdk, agent_id
        self.calls: dict[str, Call] = {}
        self.started: asyncio.Queue[Call] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        # ws.recv() itself, not SdkClient.recv(): asyncio.wait_for on 3.11 can swallow the
        # cancel of close() when a frame lands at the same moment, and the task lives on.
        async for raw in self.sdk.ws:
            self._dispatch(json.loads(raw))

    def _dispatch(self, wire: dict[str, Any]) -> None:
        name, call_id = wire.get("event"), wire.get("call_id")
        if wire.get("agent_id") != self.agent_id or not isinstance(call_id, str):
            return
        if name in ("call.started", "llm.chat.started"):
            call = Call(call_id, "chat" if name == "llm.chat.started" else str(wire.get("transport")))
            self.calls[call_id] = call
            self.started.put_nowait(call)
            return
        call = self.calls.get(call_id)
        if call is None:
            return
        if name in TURN_EVENTS or name == "chat.message":
            call.seen.append(str(name))
        if name == "user.message":  # _applyUserMessage
            call.last_message_id = wire["message_id"]
            call.last_turn_text = wire["text"]
            call.last_turn_confidence = wire["confidence"]
        elif name == "chat.message":  # emitted as user.message, with no turn state kept
            pass
        elif name == "eager.turn":  # _applyEagerTurn
            call.last_message_id = wire.get("message_id") or ""
            call.last_turn_text = wire.get("text") or ""
            call.last_turn_confidence = 0.0
            call.eager.append(wire)
        elif name == "turn.end":  # _applyTurnEnd, then the app's handler
            turn = {
                "id": wire["turn_id"],
                "messageId": wire.get("message_id") or call.last_message_id or "",
                "text": wire.get("text") or call.last_turn_text,
                "confidence": call.last_turn_confidence,
                "probability": wire["probability"],
                "latencyMs": wire["latency_ms"],
            }
            if wire.get("message_id"):
                call.last_message_id = wire["message_id"]
            call.turns.append(turn)
            self._reply(call, "I heard: " + turn["text"])

    def _reply(self, call: Call, text: str) -> None:
        """``call.reply(text)``: the frame the SDK sends (domain/call.ts reply())."""
        frame = {
            "event": "bot.reply",
            "call_id": call.call_id,
            "message_id": "msg_" + secrets.token_hex(6),
            "text": text,
            "in_reply_to": call.last_message_id,
        }
        asyncio.get_running_loop().create_task(self.sdk.send(frame))

    async def close(self) -> None:
        # The socket first: a cancelled recv (under wait_for) could stay pending while the
        # connection was open, and the teardown hung after some other test files had run.
        await self.sdk.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "turn-end-test-secret-0123456789abcdef",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_KEY": "0",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def agent(server: ServerProcess) -> AsyncIterator[SdkAgent]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "mara-" + uuid.uuid4().hex[:6]
    created = await sdk.create_agent(name, voice="elevenlabs/sarah", language="en", greeting=GREETING)
    assert created["event"] == "agent.created", created
    runner = SdkAgent(sdk, name)
    yield runner
    await runner.close()


async def mint(server: ServerProcess, channel: str, agent_id: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get(
            f"/{channel}/token", params={"agent_id": agent_id}, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def chat_done(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next ``chat.done`` (a ``chat.error`` fails the test)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            assert frame["event"] != "chat.error", frame
            if frame["event"] == "chat.done":
                return dict(frame)


async def test_the_readme_agent_answers_a_chat_through_turn_end(
    server: ServerProcess, agent: SdkAgent
) -> None:
    """Chat: the greeting opens the conversation, and each message reaches the agent as
    chat.message then turn.end (its own turn id, message id and text), whose handler's
    call.reply() is what the browser gets back."""
    token = await mint(server, "chat", agent.agent_id)
    async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
        assert json.loads(await ws.recv())["event"] == "chat.connected"
        assert (await chat_done(ws))["text"] == GREETING
        call = await asyncio.wait_for(agent.started.get(), 10)
        assert call.transport == "chat"
        for text in ("what are your hours", "and on sundays"):
            await ws.send(json.dumps({"event": "message", "text": text}))
            assert (await chat_done(ws))["text"] == "I heard: " + text
    assert call.seen == ["chat.message", "turn.end"] * 2  # no eager.turn: a chat has no detector
    first, second = call.turns
    assert [first["text"], second["text"]] == ["what are your hours", "and on sundays"]
    assert (first["id"], second["id"]) == (1, 2)
    assert first["messageId"].startswith("msg_") and first["messageId"] != second["messageId"]
    assert (first["probability"], first["latencyMs"]) == (1.0, 0)


async def test_the_readme_agent_answers_a_webrtc_call_through_turn_end(
    server: ServerProcess, agent: SdkAgent
) -> None:
    """Voice: the greeting is spoken, and what the user says reaches the agent as eager.turn,
    user.message, turn.end (the real server's order); the handler's call.reply() is spoken back."""
    token = await mint(server, "webrtc", agent.agent_id)
    peer = BrowserPeer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            response, _ = await peer.connect(http, token)
        assert response.status_code == 200, response.text
        call = await asyncio.wait_for(agent.started.get(), 10)
        assert call.transport == "webrtc"
        greeting = await peer.wait_for("bot.speaking")
        assert greeting["text"] == GREETING
        await peer.wait_for("bot.finished", message_id=greeting["message_id"])

        peer.act({"action": "inject_text", "text": "hello there"})
        answer = await peer.wait_for("bot.speaking", timeout=10)
        assert answer["text"] == "I heard: hello there"
        await peer.wait_for("bot.finished", message_id=answer["message_id"])
        browser_turn = [f["event"] for f in peer.seen if f.get("event") in TURN_EVENTS]
    finally:
        await peer.close()
    assert call.seen == list(TURN_EVENTS)
    assert browser_turn == list(TURN_EVENTS)  # the web client shows "thinking" on turn.end
    (turn,) = call.turns
    assert turn["text"] == "hello there" and turn["id"] == 1
    assert turn["confidence"] == 1.0  # from the user.message between eager.turn and turn.end
    assert turn["messageId"] == call.eager[0]["message_id"] == call.last_message_id
