"""Issue 18 item 5: the SDK's ``history.*`` requests on a real server process, on chat and on
WebRTC (an aiortc peer as the browser): one answer per request, carrying its ``request_id``, in
one message shape and under one validation for both transports (services/history.py).

The agent sends the requests back to back, without waiting, as ``Promise.all`` over
``call.getHistory()`` / ``setHistory()`` / ``setPromptVars()`` does; the SDK's requester
(pinecall/sdk kernel/requester.ts) settles each by ``request_id`` and rejects it when its answer
carries ``error``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import websockets

from tests.realtime.peer import BrowserPeer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_history_0123456789abcdef"
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "rq_1_a",
        "history.add",
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "text": "b"}]},
    ),
    ("rq_2_b", "history.add", {"messages": [{"role": "user"}]}),  # no content: refused, nothing added
    ("rq_3_c", "history.set_vars", {"vars": "not an object"}),  # refused
    ("rq_4_d", "history.get", {}),
    ("rq_5_e", "history.add_context", {"text": "VIP customer"}),
    ("rq_6_f", "history.get", {}),
]
BOTH = [{"role": "user", "content": "a", "text": "a"}, {"role": "assistant", "content": "b", "text": "b"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "history-wire-test-secret-0123456789ab",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_KEY": "0",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
        }
    )
    yield proc
    proc.stop()


async def mint(server: ServerProcess, channel: str, agent_id: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get(
            f"/{channel}/token", params={"agent_id": agent_id}, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


@asynccontextmanager
async def live_call(server: ServerProcess, transport: str) -> AsyncIterator[tuple[SdkClient, str]]:
    """An agent and one live call of ``transport`` (the browser side stays open)."""
    sdk = await SdkClient.connect(server.url, KEY)
    name = "hist-" + uuid.uuid4().hex[:6]
    assert (await sdk.create_agent(name))["event"] == "agent.created"
    token = await mint(server, transport, name)
    try:
        if transport == "chat":
            async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
                assert json.loads(await ws.recv())["event"] == "chat.connected"
                yield sdk, (await sdk.wait_for("llm.chat.started"))["call_id"]
        else:
            peer = BrowserPeer()
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
                    response, _ = await peer.connect(http, token)
                assert response.status_code == 200, response.text
                yield sdk, (await sdk.wait_for("call.started"))["call_id"]
            finally:
                await peer.close()
    finally:
        await sdk.close()


async def answers(sdk: SdkClient, call_id: str) -> dict[str, list[dict[str, Any]]]:
    """Send every request at once; collect what comes back, by request_id, until all are in."""
    for request_id, event, fields in REQUESTS:
        await sdk.send({"event": event, "call_id": call_id, "request_id": request_id, **fields})
    got: dict[str, list[dict[str, Any]]] = {}
    async with asyncio.timeout(10):
        while len(got) < len(REQUESTS):
            frame = await sdk.recv()
            assert frame["event"] in ("history.data", "history.updated"), f"stray frame: {frame}"
            assert frame["call_id"] == call_id
            got.setdefault(frame["request_id"], []).append(frame)
    with pytest.raises(TimeoutError):  # nothing more: exactly one answer each
        await sdk.recv(timeout=0.3)
    return got


def shape(frame: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k not in ("call_id", "agent_id")}


@pytest.mark.parametrize("transport", ["chat", "webrtc"])
async def test_concurrent_history_requests_each_get_their_own_answer(
    server: ServerProcess, transport: str
) -> None:
    async with live_call(server, transport) as (sdk, call_id):
        got = await answers(sdk, call_id)
    assert {rid: len(frames) for rid, frames in got.items()} == {rid: 1 for rid, _, _ in REQUESTS}
    by_id = {rid: shape(frames[0]) for rid, frames in got.items()}
    assert by_id["rq_1_a"] == {"event": "history.updated", "request_id": "rq_1_a", "count": 2}
    refused = by_id["rq_2_b"]
    assert (refused["event"], refused["count"], refused["code"]) == ("history.updated", 2, "BAD_REQUEST")
    assert "content" in refused["error"]  # the reason, for the SDK's REQUEST_REJECTED
    assert by_id["rq_3_c"]["code"] == "BAD_REQUEST" and "vars" in by_id["rq_3_c"]["error"]
    assert by_id["rq_4_d"] == {"event": "history.data", "request_id": "rq_4_d", "messages": BOTH}
    assert by_id["rq_5_e"] == {"event": "history.updated", "request_id": "rq_5_e", "count": 2}
    assert by_id["rq_6_f"] == {"event": "history.data", "request_id": "rq_6_f", "messages": BOTH}


async def test_chat_and_webrtc_answer_the_same_requests_identically(server: ServerProcess) -> None:
    """One frame shape and one validation: the same requests get the same answers on both."""
    seen = []
    for transport in ("chat", "webrtc"):
        async with live_call(server, transport) as (sdk, call_id):
            got = await answers(sdk, call_id)
        seen.append({rid: [shape(f) for f in frames] for rid, frames in got.items()})
    assert seen[0] == seen[1]


async def test_webrtc_history_holds_what_was_said_in_the_chat_shape(server: ServerProcess) -> None:
    """The user's words and the agent's spoken reply, as {role, content, text} like chat's."""
    sdk = await SdkClient.connect(server.url, KEY)
    name = "hist-" + uuid.uuid4().hex[:6]
    assert (await sdk.create_agent(name))["event"] == "agent.created"
    peer = BrowserPeer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            response, _ = await peer.connect(http, await mint(server, "webrtc", name))
        assert response.status_code == 200, response.text
        call_id = (await sdk.wait_for("call.started"))["call_id"]
        await asyncio.wait_for(peer.opened.wait(), 10)
        peer.act({"action": "inject_text", "text": "what time is it"})
        await sdk.wait_for("turn.end")
        await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "m-1", "text": "noon"})
        await sdk.wait_for("message.confirmed")
        await sdk.send({"event": "history.get", "call_id": call_id, "request_id": "rq_9_z"})
        data = await sdk.wait_for("history.data")
    finally:
        await peer.close()
        await sdk.close()
    assert data["request_id"] == "rq_9_z"
    assert data["messages"] == [
        {"role": "user", "content": "what time is it", "text": "what time is it"},
        {"role": "assistant", "content": "noon", "text": "noon"},
    ]
