"""Issue 18 item 7: a token's sealed ``scope`` and ``call_id`` are enforced on chat and WebRTC, on a
real server process (an aiortc peer as the browser; policy in server/core/scopes.py).

An ``observe`` (or ``supervise``) token opens a receive-only session: it hears the greeting, and
its user input is refused with ``scope_forbidden`` and never reaches the agent. A token sealed to
a ``call_id`` is refused (``token_wrong_call``, nothing spent): a chat or WebRTC session opens a
new call, never the sealed one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.realtime.peer import BrowserPeer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_scopes_0123456789abcdef"
GREETING = "Welcome, listener"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "scopes-test-secret-0123456789abcdef",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_KEY": "0",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def agent(server: ServerProcess) -> AsyncIterator[tuple[SdkClient, str]]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "scoped-" + uuid.uuid4().hex[:6]
    assert (await sdk.create_agent(name, greeting=GREETING))["event"] == "agent.created"
    yield sdk, name
    await sdk.close()


async def mint(server: ServerProcess, channel: str, agent_id: str, **query: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get(
            f"/{channel}/token",
            params={"agent_id": agent_id, **query},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def until(ws: ClientConnection, name: str) -> dict[str, Any]:
    while (frame := await recv(ws))["event"] != name:
        pass
    return frame


async def agent_frames(sdk: SdkClient, quiet: float = 0.5) -> list[str]:
    """The names of every frame the agent gets until it has been quiet for ``quiet`` seconds."""
    names = []
    while True:
        try:
            names.append(str((await sdk.recv(timeout=quiet))["event"]))
        except TimeoutError:
            return names


@pytest.mark.parametrize("scope", ["observe", "supervise"])
async def test_a_listening_chat_token_receives_but_never_speaks(
    server: ServerProcess, agent: tuple[SdkClient, str], scope: str
) -> None:
    sdk, name = agent
    token = await mint(server, "chat", name, scope=scope)
    async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
        assert (await recv(ws))["event"] == "chat.connected"
        assert (await until(ws, "chat.done"))["text"] == GREETING  # it receives
        started = await sdk.wait_for("llm.chat.started")
        assert started["scope"] == scope  # the agent knows nobody will talk
        await ws.send(json.dumps({"event": "message", "text": "let me in"}))
        refused = await recv(ws)
        assert (refused["event"], refused["code"]) == ("chat.error", "scope_forbidden")
        assert "participate" in refused["error"]
        await ws.send(json.dumps({"event": "set_context", "key": "page", "value": "x"}))
        assert (await recv(ws))["code"] == "scope_forbidden"
        await ws.send(json.dumps({"event": "ping"}))
        assert (await recv(ws))["event"] == "pong", "the socket stays open"
        seen = await agent_frames(sdk)
    assert "chat.message" not in seen and "session.context" not in seen and "turn.end" not in seen


async def test_a_participating_chat_token_talks_and_its_frames_are_unchanged(
    server: ServerProcess, agent: tuple[SdkClient, str]
) -> None:
    sdk, name = agent
    for query in ({}, {"scope": "participate"}):
        token = await mint(server, "chat", name, **query)
        async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
            assert (await recv(ws))["event"] == "chat.connected"
            assert "scope" not in await sdk.wait_for("llm.chat.started")
            await ws.send(json.dumps({"event": "message", "text": "hello"}))
            assert (await sdk.wait_for("chat.message"))["text"] == "hello"


async def test_a_chat_token_sealed_to_a_call_is_refused_before_it_is_spent(
    server: ServerProcess, agent: tuple[SdkClient, str]
) -> None:
    sdk, name = agent
    token = await mint(server, "chat", name, scope="observe", call_id="chat-0123456789abcdef")
    for _ in range(2):  # the same refusal twice: the token was not consumed
        async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token_wrong_call")
    assert "llm.chat.started" not in await agent_frames(sdk)


async def test_an_observe_webrtc_token_hears_the_call_but_cannot_speak(
    server: ServerProcess, agent: tuple[SdkClient, str]
) -> None:
    sdk, name = agent
    token = await mint(server, "webrtc", name, scope="observe")
    peer = BrowserPeer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            response, _ = await peer.connect(http, token)
        assert response.status_code == 200, response.text
        started = await sdk.wait_for("call.started")
        assert started["scope"] == "observe"
        greeting = await peer.wait_for("bot.speaking")
        assert greeting["text"] == GREETING
        peer.act({"action": "inject_text", "text": "let me in"})
        refused = await peer.wait_for("error")
        assert refused["code"] == "scope_forbidden" and "inject_text" in refused["error"]
        peer.act({"action": "set_context", "key": "page", "value": "x"})
        assert (await peer.wait_for("error"))["code"] == "scope_forbidden"
        seen = await agent_frames(sdk)
    finally:
        await peer.close()
    assert not {"user.message", "turn.end", "eager.turn"} & set(seen)


async def test_a_webrtc_token_sealed_to_a_call_is_refused(
    server: ServerProcess, agent: tuple[SdkClient, str]
) -> None:
    sdk, name = agent
    token = await mint(server, "webrtc", name, call_id="wrt_0123456789abcdef")
    peer = BrowserPeer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            response, body = await peer.connect(http, token)
            assert (response.status_code, body["code"]) == (403, "token_wrong_call")
            again, _ = await peer.connect(http, token)  # refused the same way: nothing spent
            assert again.json()["code"] == "token_wrong_call"
    finally:
        await peer.close()
    assert "call.started" not in await agent_frames(sdk)
