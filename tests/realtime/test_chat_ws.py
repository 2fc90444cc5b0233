"""``WS /chat/ws`` end to end: the real server process, a browser-like websockets client and an
SDK agent speaking /client frame by frame (CONTRACT §4, §6).

Runs once on the embedded store and once on a real redis-server (thread history lives there).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from server.core.tokens import Channel, Claims, JtiSource, TokenCodec
from tests.support.procs import RedisProcess, ServerProcess, start_server
from tests.support.sdk import SdkClient

new_jti = JtiSource()
KEY = "sk_test_acme_chat_0123456789abcdef"
OTHER_KEY = "sk_test_globex_chat_0123456789abcdef"
SECRET = "chat-test-token-secret-0123456789abcdef"
BASE_ENV = {
    "VOICE_TOKEN_SECRET": SECRET,
    "VOICE_API_KEYS": f"acme:{KEY},globex:{OTHER_KEY}",
    "VOICE_RATE_LIMIT_KEY": "0",
    "VOICE_RATE_LIMIT_PUBLIC": "0",
    "VOICE_MOCK_AGENT": "off",
}


# -- helpers (also used by tests/services) ------------------------------------------------------
def agent_name() -> str:
    return "chat-agent-" + uuid.uuid4().hex[:8]


async def online(server: ServerProcess, name: str, key: str = KEY, **config: object) -> SdkClient:
    sdk = await SdkClient.connect(server.url, key)
    created = await sdk.create_agent(name, **config)
    assert created["event"] == "agent.created", created
    return sdk


async def mint(
    server: ServerProcess,
    agent: str,
    channel: str = "chat",
    key: str = KEY,
    metadata: dict[str, Any] | None = None,
) -> str:
    params = {"agent_id": agent}
    if metadata is not None:
        params["metadata"] = json.dumps(metadata)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get(
            f"/{channel}/token", params=params, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def chat_url(server: ServerProcess, token: str, thread: str | None = None) -> str:
    # The browser puts the token in the query string unencoded (research notes §3).
    return f"{server.ws_url}/chat/ws?token={token}" + (f"&thread={thread}" if thread is not None else "")


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def until(ws: ClientConnection, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame called ``name``, skipping others (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.01, deadline - time.monotonic()))
        if frame["event"] == name:
            return frame


async def open_chat(
    server: ServerProcess, token: str, thread: str | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(chat_url(server, token, thread))
    first = await recv(ws)
    assert first["event"] == "chat.connected" and first["session_id"], first
    return ws, first


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Wait for the server's close frame; every frame before it must not exist."""
    with pytest.raises(ConnectionClosed) as closed:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        pytest.fail(f"expected a close, got a frame first: {frame!r}")
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def refused(url: str) -> tuple[int, str]:
    """A refusal: the close naming the code, on the first recv (CONTRACT §4); then the same
    refusal from a browser (an Origin): one ``error`` frame naming the code first (the web
    ChatSession waits for it), then the same close."""
    async with websockets.connect(url) as ws:
        code, reason = await closed_with(ws)
    async with websockets.connect(url, origin=Origin("https://app.example.com")) as ws:
        frame = await recv(ws)
        assert (frame["event"], frame["code"]) == ("error", reason) and frame["error"], frame
        assert await closed_with(ws) == (code, reason)
    return code, reason


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = dict(BASE_ENV)
    if request.param == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        env["VOICE_STORE_URL"] = redis.url.replace("/0", "/2")
    proc = start_server(env)
    yield proc
    proc.stop()
    log = proc.log()
    assert "token=cht_" not in log and KEY not in log and SECRET not in log
    assert "thread=t-" not in log and '"t-' not in log  # thread ids are credentials too


@pytest.fixture
async def agent(server: ServerProcess) -> AsyncIterator[tuple[str, SdkClient]]:
    name = agent_name()
    sdk = await online(server, name)
    yield name, sdk
    await sdk.close()


# -- the happy path -----------------------------------------------------------------------------
async def test_chat_connected_comes_first_and_the_agent_gets_llm_chat_started(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """The browser hears chat.connected first; the agent gets llm.chat.started with the sealed
    metadata and a chat- call id, and no call.started (the SDK would make a second Call)."""
    name, sdk = agent
    token = await mint(server, name, metadata={"user_id": "u-42"})
    ws, connected = await open_chat(server, token)
    started = await sdk.recv()
    assert started["event"] == "llm.chat.started", started
    assert started["call_id"].startswith("chat-")
    assert started["agent_id"] == name
    assert started["metadata"] == {"user_id": "u-42"}
    assert started["session_id"] == connected["session_id"]
    await ws.send(json.dumps({"event": "message", "text": "hi"}))
    message = await sdk.recv()
    assert message["event"] == "chat.message", "no call.started may come between"
    await ws.close()


async def test_a_message_reaches_the_agent_and_the_reply_streams_cumulatively(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.send(json.dumps({"event": "message", "text": "  what is the weather?  "}))
    message = await sdk.wait_for("chat.message")
    assert message["call_id"] == call_id and message["text"] == "what is the weather?"
    assert message["message_id"].startswith("msg_")
    reply = " ".join(f"word{i}" for i in range(30)) + "."
    await sdk.send(
        {"event": "bot.reply", "call_id": call_id, "message_id": "msg_r1", "text": reply, "in_reply_to": ""}
    )
    texts = []
    while True:
        frame = await recv(ws)
        assert frame["message_id"] == "msg_r1", frame
        if frame["event"] == "chat.done":
            break
        assert frame["event"] == "chat.token", frame
        texts.append(frame["text"])
    assert len(texts) >= 2, "a reply streams in several chunks"
    assert all(later.startswith(earlier) and later != earlier for earlier, later in itertools.pairwise(texts))
    assert texts[-1] == reply and frame["text"] == reply
    # Issue 18 items 6 and 11: the SDK's call.say() resolves on bot.finished, and message.confirmed
    # puts the assistant line into call.messages.
    finished = await sdk.wait_for("bot.finished")
    assert (finished["call_id"], finished["message_id"], finished["text"]) == (call_id, "msg_r1", reply)
    confirmed = await sdk.wait_for("message.confirmed")
    assert (confirmed["call_id"], confirmed["message_id"], confirmed["text"]) == (call_id, "msg_r1", reply)
    await ws.close()


async def test_bot_reply_stream_start_chunk_end(server: ServerProcess, agent: tuple[str, SdkClient]) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.send(json.dumps({"event": "message", "text": "stream please"}))
    await sdk.wait_for("chat.message")
    base = {"event": "bot.reply.stream", "call_id": call_id, "message_id": "msg_s"}
    await sdk.send({**base, "action": "start", "in_reply_to": ""})
    await sdk.send({**base, "action": "chunk", "token": "Hel"})
    await sdk.send({**base, "action": "chunk", "token": "lo!"})
    await sdk.send({**base, "action": "end"})
    assert [await recv(ws) for _ in range(3)] == [
        {"event": "chat.token", "message_id": "msg_s", "text": "Hel", "token": "Hel"},
        {"event": "chat.token", "message_id": "msg_s", "text": "Hello!", "token": "lo!"},
        {"event": "chat.done", "message_id": "msg_s", "text": "Hello!"},
    ]
    await ws.close()


async def test_set_context_reaches_the_agent(server: ServerProcess, agent: tuple[str, SdkClient]) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.send(json.dumps({"event": "set_context", "key": "conversation", "value": {"mode": "text"}}))
    frame = await sdk.wait_for("session.context")
    assert frame == {
        "event": "session.context",
        "call_id": call_id,
        "agent_id": name,
        "key": "conversation",
        "value": {"mode": "text"},
    }
    await ws.close()


async def test_bad_frames_get_chat_error_and_the_socket_stays_open(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    await sdk.wait_for("llm.chat.started")
    for bad in ("not json", b"\x00binary", "[1, 2]", '{"text": "no event"}', '{"event": "dance"}'):
        await ws.send(bad)
        error = await recv(ws)
        assert error["event"] == "chat.error" and error["code"] == "bad_request" and error["error"], error
    for text in ("", "   ", 42, "x" * 4001):
        await ws.send(json.dumps({"event": "message", "text": text}))
        error = await recv(ws)
        assert error["event"] == "chat.error" and error["code"] == "bad_request", error
    await ws.send(json.dumps({"event": "set_context", "key": ""}))
    assert (await recv(ws))["event"] == "chat.error"
    await ws.send(json.dumps({"event": "message", "text": "x" * 4000}))
    assert (await sdk.wait_for("chat.message"))["text"] == "x" * 4000, "the socket still works"
    await ws.close()


async def test_a_second_message_before_the_reply_is_refused(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """Turns are serialised, as the browser client assumes: one message, one reply."""
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.send(json.dumps({"event": "message", "text": "one"}))
    await sdk.wait_for("chat.message")
    await ws.send(json.dumps({"event": "message", "text": "two"}))
    error = await recv(ws)
    assert error["event"] == "chat.error" and "wait for the reply" in error["error"]
    await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "m1", "text": "ok"})
    assert (await until(ws, "chat.done"))["text"] == "ok"
    await ws.send(json.dumps({"event": "message", "text": "three"}))
    assert (await sdk.wait_for("chat.message"))["text"] == "three"
    await ws.close()


async def test_an_oversized_frame_is_a_chat_error_and_a_huge_one_closes_the_socket(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """Over 64 KiB: chat.error payload_too_large, the socket stays open; over the WebSocket
    layer's limit (twice VOICE_CLIENT_FRAME_BYTES, 2 MiB): closed 1009."""
    name, _ = agent
    ws, _ = await open_chat(server, await mint(server, name))
    await ws.send(json.dumps({"event": "message", "text": "x" * 70_000}))
    refused = await until(ws, "chat.error")
    assert refused["code"] == "payload_too_large" and "65536" in refused["error"]
    await ws.send(json.dumps({"event": "message", "text": "x" * (2 * 1024 * 1024 + 1)}))
    code, _ = await closed_with(ws)
    assert code == 1009  # message too big (RFC 6455 §7.4.1)


# -- history ------------------------------------------------------------------------------------
async def converse(
    server: ServerProcess,
    name: str,
    sdk: SdkClient,
    thread: str | None,
    said: str,
    reply: str,
    token: str | None = None,
) -> None:
    ws, _ = await open_chat(server, token or await mint(server, name), thread)
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.send(json.dumps({"event": "message", "text": said}))
    await sdk.wait_for("chat.message")
    await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "m", "text": reply})
    await until(ws, "chat.done")
    await ws.close()
    await sdk.wait_for("llm.chat.ended")


async def test_a_thread_comes_back_as_chat_history_on_reconnect(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    thread = "t-" + uuid.uuid4().hex
    await converse(server, name, sdk, thread, "my name is Ada", "Hello Ada")
    ws, _ = await open_chat(server, await mint(server, name), thread)
    history = await recv(ws)
    assert history == {
        "event": "chat.history",
        "messages": [{"role": "user", "text": "my name is Ada"}, {"role": "assistant", "text": "Hello Ada"}],
    }
    await ws.close()


async def test_history_is_scoped_by_thread_and_agent(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    thread = "t-" + uuid.uuid4().hex
    await converse(server, name, sdk, thread, "secret", "noted")
    other_name = agent_name()
    other = await online(server, other_name)
    for target, owner, target_thread in ((name, sdk, "t-" + uuid.uuid4().hex), (other_name, other, thread)):
        ws, _ = await open_chat(server, await mint(server, target), target_thread)
        call_id = (await owner.wait_for("llm.chat.started"))["call_id"]
        await owner.send({"event": "bot.reply", "call_id": call_id, "message_id": "g", "text": "greeting"})
        assert (await recv(ws))["event"] == "chat.token", "no chat.history for an unknown thread"
        await ws.close()
    await other.close()


async def test_a_sealed_thread_id_wins_over_the_query(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    sealed = "sealed-" + uuid.uuid4().hex
    first = await mint(server, name, metadata={"threadId": sealed})
    await converse(server, name, sdk, None, "hello", "hi", token=first)
    token = await mint(server, name, metadata={"threadId": sealed})
    ws, _ = await open_chat(server, token, thread="someone-elses-thread")
    assert (await recv(ws))["event"] == "chat.history"
    await ws.close()


async def test_a_browser_chosen_thread_never_reaches_a_sealed_one(server: ServerProcess) -> None:
    """Issue 15: the backend seals threadId=user-42; a browser on an allowed origin (no key)
    passing &thread=user-42 neither reads that history nor writes into it."""
    name = agent_name()
    sdk = await online(server, name, allowed_origins=["https://shop.example.com"])
    thread = "user-" + uuid.uuid4().hex[:6]
    sealed_token = await mint(server, name, metadata={"threadId": thread})
    await converse(server, name, sdk, None, "my card ends 4242", "noted", token=sealed_token)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        public = await http.get(
            "/chat/token", params={"agent_id": name}, headers={"Origin": "https://shop.example.com"}
        )
    assert public.status_code == 200, public.text
    await converse(server, name, sdk, thread, "intruder", "hello stranger", token=public.json()["token"])
    ws, _ = await open_chat(server, await mint(server, name, metadata={"threadId": thread}))
    history = await recv(ws)
    assert history == {
        "event": "chat.history",
        "messages": [{"role": "user", "text": "my card ends 4242"}, {"role": "assistant", "text": "noted"}],
    }
    await ws.close()
    await sdk.wait_for("llm.chat.ended")
    await sdk.close()


async def test_sdk_history_commands_are_all_answered(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """The SDK awaits history.data / history.updated with no timeout: each command gets one."""
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name), "h-" + uuid.uuid4().hex)
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]

    async def ask(event: str, **fields: Any) -> dict[str, Any]:
        await sdk.send({"event": event, "call_id": call_id, **fields})
        return await sdk.wait_for("history.data", "history.updated")

    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert (await ask("history.add", messages=two))["count"] == 2
    data = await ask("history.get")
    assert data["event"] == "history.data" and data["call_id"] == call_id and data["agent_id"] == name
    assert [(m["role"], m["content"]) for m in data["messages"]] == [("user", "a"), ("assistant", "b")]
    assert (await ask("history.set", messages=two[:1]))["count"] == 1
    for event, fields in (
        ("history.set_vars", {"vars": {"name": "Ada"}}),
        ("history.add_context", {"text": "VIP customer"}),
        ("history.set_instructions", {"prompt": "Be brief."}),
    ):
        answer = await ask(event, **fields)
        assert answer == {"event": "history.updated", "call_id": call_id, "agent_id": name, "count": 1}
    assert (await ask("history.clear"))["count"] == 0
    await sdk.send({"event": "history.add", "call_id": call_id, "messages": "nope"})
    refused = await sdk.recv()  # a malformed command is still answered, saying why (the SDK rejects)
    assert (refused["event"], refused["code"], refused["count"]) == ("history.updated", "BAD_REQUEST", 0)
    # Issue 18: as the SDK's requester sends them, concurrent requests each get their own answer.
    for index in range(3):
        await sdk.send({"event": "history.get", "call_id": call_id, "request_id": f"rq_{index}_x"})
    answers = [await sdk.wait_for("history.data") for _ in range(3)]
    assert [a["request_id"] for a in answers] == ["rq_0_x", "rq_1_x", "rq_2_x"]
    await ws.close()


# -- refusals: a close frame, nothing before it -------------------------------------------------
def _signed(org: str, agent: str, channel: Channel, expires_at: float) -> str:
    now = time.time()
    claims = Claims(new_jti(), org, (agent,), channel, now - 120, expires_at)
    return TokenCodec((SECRET,)).encode(claims)


async def test_refusals_close_1008_with_the_code_as_reason(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, _ = agent
    other_secret = TokenCodec(("another-secret",)).encode(
        Claims(new_jti(), "acme", (name,), Channel.CHAT, time.time(), time.time() + 60)
    )
    cases = {
        "token_invalid": [
            chat_url(server, "cht_garbage"),
            chat_url(server, other_secret),
            f"{server.ws_url}/chat/ws",
        ],
        "token_expired": [chat_url(server, _signed("acme", name, Channel.CHAT, time.time() - 5))],
        "token_wrong_channel": [chat_url(server, await mint(server, name, channel="webrtc"))],
        "bad_request": [
            chat_url(server, await mint(server, name), thread=bad) for bad in ("a/b", "x" * 129, "")
        ],
    }
    for code, urls in cases.items():
        for url in urls:
            assert await refused(url) == (1008, code), url


async def test_a_spent_token_is_refused(server: ServerProcess, agent: tuple[str, SdkClient]) -> None:
    name, _ = agent
    token = await mint(server, name)
    ws, _ = await open_chat(server, token)
    assert await refused(chat_url(server, token)) == (1008, "token_spent")
    await ws.close()


async def test_a_refused_thread_does_not_spend_the_token(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, _ = agent
    token = await mint(server, name)
    assert await refused(chat_url(server, token, thread="no%20spaces")) == (1008, "bad_request")
    ws, _ = await open_chat(server, token)
    await ws.close()


async def test_an_offline_agent_is_refused(server: ServerProcess) -> None:
    name = agent_name()
    sdk = await online(server, name)
    token = await mint(server, name)
    await sdk.close()
    deadline = time.monotonic() + 10
    while True:  # the registry forgets the agent when the server sees the socket close
        async with httpx.AsyncClient(base_url=server.url) as http:
            gone = await http.get(
                "/chat/token", params={"agent_id": name}, headers={"Authorization": f"Bearer {KEY}"}
            )
        if gone.status_code == 404 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert await refused(chat_url(server, token)) == (1008, "agent_not_online")


# -- endings ------------------------------------------------------------------------------------
async def test_the_agent_going_offline_ends_the_chat(server: ServerProcess) -> None:
    name = agent_name()
    sdk = await online(server, name)
    ws, _ = await open_chat(server, await mint(server, name))
    await sdk.wait_for("llm.chat.started")
    await sdk.close()
    assert await closed_with(ws) == (1000, "agent_offline")


async def test_closing_the_browser_ends_the_call_for_the_agent(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """call.ended carries the reason and comes first; llm.chat.ended follows for chat clients."""
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await ws.close()
    ended = await sdk.recv()
    assert ended["event"] == "call.ended" and ended["call_id"] == call_id, ended
    assert ended["reason"] == "client_closed" and ended["duration_seconds"] >= 0
    assert (await sdk.recv()) == {
        "event": "llm.chat.ended",
        "call_id": call_id,
        "agent_id": name,
        "reason": "client_closed",
    }


async def test_an_agent_hangup_closes_the_chat(server: ServerProcess, agent: tuple[str, SdkClient]) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    await sdk.send({"event": "call.hangup", "call_id": call_id})
    assert await closed_with(ws) == (1000, "hangup")
    assert (await sdk.wait_for("call.ended"))["reason"] == "hangup"


async def test_another_org_cannot_command_the_chat(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
    intruder = await SdkClient.connect(server.url, OTHER_KEY)
    await intruder.send({"event": "bot.reply", "call_id": call_id, "message_id": "x", "text": "pwned"})
    assert (await intruder.recv())["code"] == "CALL_NOT_FOUND"
    await intruder.close()
    await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "y", "text": "mine"})
    assert (await until(ws, "chat.done"))["text"] == "mine"
    await ws.close()


async def test_a_flooding_browser_is_held_to_its_inbound_budget(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    """An anonymous browser pushed ~90 MB to its agent in 0.7 s; now what reaches the agent is
    bounded by VOICE_SESSION_INBOUND_BYTES (32 KiB/s, 8 s of burst) and the rest is refused."""
    name, sdk = agent
    ws, _ = await open_chat(server, await mint(server, name))
    await sdk.wait_for("llm.chat.started")
    value = "v" * 60_000
    frames = 200  # 12 MB
    started = time.monotonic()
    for i in range(frames):
        await ws.send(json.dumps({"event": "set_context", "key": f"k{i}", "value": value}))
    limited = 0
    for _ in range(frames):
        answer = await recv(ws)
        assert answer["event"] == "chat.error" and answer["code"] == "rate_limited", answer
        limited += 1
        if limited == frames - 10:
            break
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.1)
    await ws.send(json.dumps({"event": "set_context", "key": "done", "value": 1}))
    delivered = 0
    while (frame := await sdk.wait_for("session.context"))["key"] != "done":
        delivered += len(frame["value"])
    budget = 32 * 1024 * (8 + elapsed + 1)
    assert delivered <= budget, (delivered, budget)
    assert limited >= frames - 10
    await ws.close()


async def test_an_agents_config_greeting_opens_a_new_chat_and_is_confirmed_to_it(
    server: ServerProcess,
) -> None:
    """Issue 18 item 2: the SDK README's first example registers an agent with a greeting."""
    name = agent_name()
    sdk = await online(server, name, greeting="Hello! How can I help?")
    ws, _ = await open_chat(server, await mint(server, name))
    while (frame := await recv(ws))["event"] != "chat.done":
        assert frame["event"] == "chat.token", frame
    assert frame["text"] == "Hello! How can I help?" and frame["message_id"].startswith("greet_")
    confirmed = await sdk.wait_for("message.confirmed")
    assert confirmed["text"] == "Hello! How can I help?"
    await ws.close()
    await sdk.close()
