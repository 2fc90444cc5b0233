"""The SDK's commands on live sessions and the rest of issue 17, on a real server process, each
frame sent exactly as @pinecall/sdk 0.14 sends it (src/domain/agent.ts: ``configureSession``,
``pause``, ``resume``, ``sendMessage``), each answer the frames its handlers read
(src/dispatch/handlers/session.ts, lifecycle.ts, error.ts)."""

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

from server.core.whatsapp import sample_payload, sign
from tests.realtime.peer import BrowserPeer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_sessions_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
WA_SECRET = "sessions-wa-app-secret"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "sessions-secret-0123456789abcdef0123",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_KEY": "0",
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
            "VOICE_CHAT_REPLY_SECONDS": "2",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
        yield client


@pytest.fixture
async def agent(server: ServerProcess) -> AsyncIterator[tuple[SdkClient, str]]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "sess-" + uuid.uuid4().hex[:8]
    assert (await sdk.create_agent(name))["event"] == "agent.created"
    yield sdk, name
    await sdk.close()


async def mint(http: httpx.AsyncClient, agent_id: str, channel: str) -> str:
    response = await http.get(f"/{channel}/token", params={"agent_id": agent_id}, headers=AUTH)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def open_chat(
    server: ServerProcess, http: httpx.AsyncClient, sdk: SdkClient, name: str
) -> tuple[ClientConnection, dict[str, Any]]:
    chat = await websockets.connect(server.ws_url + "/chat/ws?token=" + await mint(http, name, "chat"))
    assert json.loads(await asyncio.wait_for(chat.recv(), 10))["event"] == "chat.connected"
    started = await sdk.wait_for("llm.chat.started")
    return chat, started


async def browser_next(chat: ClientConnection, *names: str, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(chat.recv(), timeout))
        if frame["event"] in names:
            return frame


async def nothing_for(chat: ClientConnection, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(chat.recv(), seconds)


async def test_a_paused_chat_holds_the_agents_replies_and_carries_the_humans(
    server: ServerProcess, http: httpx.AsyncClient, agent: tuple[SdkClient, str]
) -> None:
    """agent.pause(id): session.paused {session_id}; the user's message still reaches the agent,
    paused: true; the agent's own bot.reply is refused SESSION_PAUSED and never reaches the
    browser; agent.sendMessage is delivered (session.sent); agent.resume lets replies through."""
    sdk, name = agent
    chat, started = await open_chat(server, http, sdk, name)
    call_id = started["call_id"]

    await sdk.send({"event": "session.pause", "agent_id": name, "session_id": call_id})
    paused = await sdk.wait_for("session.paused")
    assert (paused["agent_id"], paused["session_id"]) == (name, call_id)

    await chat.send(json.dumps({"event": "message", "text": "is anyone there?"}))
    said = await sdk.wait_for("chat.message")
    assert (said["text"], said["paused"]) == ("is anyone there?", True)
    await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "ai-1", "text": "I am the AI"})
    refused = await sdk.wait_for("session.sent", "bot.finished")
    assert (refused["event"], refused["code"], refused["call_id"]) == ("error", "SESSION_PAUSED", call_id)
    await nothing_for(chat, 0.3)

    await sdk.send(
        {"event": "session.send", "agent_id": name, "session_id": call_id, "text": "Hi, a human here."}
    )
    done = await browser_next(chat, "chat.done")
    assert done["text"] == "Hi, a human here."
    sent = await sdk.wait_for("session.sent")
    assert (sent["agent_id"], sent["session_id"]) == (name, call_id)
    # The human's words are the agent's side of the conversation, as its replies are.
    await sdk.send({"event": "history.get", "call_id": call_id, "request_id": "h1"})
    history = await sdk.wait_for("history.data")
    assert any("Hi, a human here." in json.dumps(m) for m in history["messages"])

    await sdk.send({"event": "session.resume", "agent_id": name, "session_id": call_id})
    resumed = await sdk.wait_for("session.resumed")
    assert resumed["session_id"] == call_id
    await chat.send(json.dumps({"event": "message", "text": "and now?"}))
    assert "paused" not in await sdk.wait_for("chat.message")
    await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "ai-2", "text": "Back."})
    assert (await browser_next(chat, "chat.done"))["text"] == "Back."
    await chat.close()


async def test_session_commands_name_the_session_by_either_id_and_unknown_ones_are_refused(
    server: ServerProcess, http: httpx.AsyncClient, agent: tuple[SdkClient, str]
) -> None:
    """session_id may be the call id or call.started's sess_ id; an unknown one is error
    SESSION_NOT_FOUND (the SDK's ErrorHandler emits it as an error); configureSession answers
    session.configured and, for a language, call.updated (the SDK's Call takes it)."""
    sdk, name = agent
    chat, started = await open_chat(server, http, sdk, name)
    await sdk.send(
        {
            "event": "session.configure",
            "agent_id": name,
            "session_id": started["session_id"],
            "language": "es",
            "voice": "mock",
            "prompt": "Be brief.",
        }
    )
    updated = await sdk.wait_for("call.updated")
    assert (updated["call_id"], updated["language"]) == (started["call_id"], "es")
    configured = await sdk.wait_for("session.configured")
    assert configured["session_id"] == started["session_id"]

    for frame in (
        {"event": "session.pause", "agent_id": name, "session_id": "chat-nope"},
        {"event": "session.send", "agent_id": name, "session_id": "wrt_nope", "text": "hi"},
        {"event": "session.configure", "agent_id": name, "session_id": "sess_nope", "language": "fr"},
    ):
        await sdk.send(frame)
        unknown = await sdk.wait_for("session.paused", "session.sent", "session.configured")
        assert (unknown["event"], unknown["code"], unknown["agent_id"]) == (
            "error",
            "SESSION_NOT_FOUND",
            name,
        )
        assert str(frame["session_id"]) in unknown["error"]

    # Another agent of the org may not steer this agent's session.
    other = await SdkClient.connect(server.url, KEY)
    other_name = "sess-" + uuid.uuid4().hex[:8]
    await other.create_agent(other_name)
    await other.send({"event": "session.pause", "agent_id": other_name, "session_id": started["call_id"]})
    assert (await other.wait_for("session.paused"))["code"] == "SESSION_NOT_FOUND"
    await other.send(
        {"event": "session.send", "agent_id": name, "session_id": started["call_id"], "text": "x"}
    )
    assert (await other.wait_for("session.sent"))["code"] == "REGISTRATION_ERROR"  # not its agent
    await other.close()
    await chat.close()


async def test_a_global_pause_covers_live_and_new_sessions(
    server: ServerProcess, http: httpx.AsyncClient, agent: tuple[SdkClient, str]
) -> None:
    """agent.pause() with no target pauses the whole agent (session.paused without session_id):
    sessions live now and sessions that start later; agent.resume() clears it."""
    sdk, name = agent
    chat, started = await open_chat(server, http, sdk, name)
    await sdk.send({"event": "session.pause", "agent_id": name})
    assert await sdk.wait_for("session.paused") == {"event": "session.paused", "agent_id": name}
    late, late_started = await open_chat(server, http, sdk, name)
    for browser in (chat, late):
        await browser.send(json.dumps({"event": "message", "text": "hello"}))
        assert (await sdk.wait_for("chat.message"))["paused"] is True
    await sdk.send({"event": "bot.reply", "call_id": late_started["call_id"], "text": "AI"})
    assert (await sdk.wait_for("bot.finished"))["code"] == "SESSION_PAUSED"
    await sdk.send({"event": "session.resume", "agent_id": name})
    assert await sdk.wait_for("session.resumed") == {"event": "session.resumed", "agent_id": name}
    await sdk.send({"event": "bot.reply", "call_id": started["call_id"], "text": "AI again"})
    assert (await browser_next(chat, "chat.done"))["text"] == "AI again"
    await sdk.send({"event": "session.pause", "agent_id": name, "contact": "+15550100"})
    assert (await sdk.wait_for("session.paused"))["code"] == "BAD_REQUEST"
    await chat.close()
    await late.close()


async def test_webrtc_sessions_are_configured_paused_and_spoken_to(
    http: httpx.AsyncClient, agent: tuple[SdkClient, str]
) -> None:
    """On a live WebRTC session: configureSession changes its config (call.updated with the
    config and language), a paused session's user input is marked paused and the agent's reply
    held back, and sendMessage is spoken on the data channel."""
    sdk, name = agent
    peer = BrowserPeer()
    try:
        response, _ = await peer.connect(http, await mint(http, name, "webrtc"))
        assert response.status_code == 200, response.text
        started = await sdk.wait_for("call.started")
        await asyncio.wait_for(peer.opened.wait(), 10)
        call_id = started["call_id"]
        await sdk.send(
            {
                "event": "session.configure",
                "agent_id": name,
                "session_id": call_id,
                "voice": "mock",
                "language": "de",
            }
        )
        updated = await sdk.wait_for("call.updated")
        assert updated["language"] == "de" and updated["config"]["voice"] == "mock"
        assert (await sdk.wait_for("session.configured"))["session_id"] == call_id

        await sdk.send({"event": "session.pause", "agent_id": name, "session_id": call_id})
        await sdk.wait_for("session.paused")
        peer.act({"action": "inject_text", "text": "hello?"})
        said = await sdk.wait_for("user.message")
        assert (said["text"], said["paused"]) == ("hello?", True)
        await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "ai-1", "text": "robot"})
        assert (await sdk.wait_for("bot.speaking"))["code"] == "SESSION_PAUSED"
        await sdk.send({"event": "session.send", "agent_id": name, "session_id": call_id, "text": "a person"})
        sent = await sdk.wait_for("session.sent")
        speaking = await peer.wait_for("bot.speaking", message_id=sent["message_id"])
        assert speaking["text"] == "a person"
        assert all(e.get("message_id") != "ai-1" for e in peer.seen)
    finally:
        await peer.close()


async def whatsapp_agent(server: ServerProcess, pnid: str) -> tuple[SdkClient, str]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "wa-dev-" + uuid.uuid4().hex[:6]
    await sdk.create_agent(name)
    channel = {"type": "whatsapp", "ref": pnid, "accessToken": "t", "appSecret": WA_SECRET}
    await sdk.send({"event": "channel.add", "agent_id": name, **channel})
    assert (await sdk.wait_for("channel.added"))["event"] == "channel.added"
    return sdk, name


async def whatsapp_from(http: httpx.AsyncClient, pnid: str, sender: str, text: str) -> None:
    body = json.dumps(sample_payload(pnid, sender, text, "wamid." + uuid.uuid4().hex)).encode()
    response = await http.post(
        "/whatsapp/webhook", content=body, headers={"X-Hub-Signature-256": sign(body, WA_SECRET)}
    )
    assert response.status_code == 200, response.text


async def test_route_callers_lets_only_the_routed_callers_reach_the_dev_agent(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """agent.routeCallers(["+34600111222"]) sends dev.config {callers} with no agent id right after
    the agent's channel.add (pinecall/sdk domain/agent.ts _flushPending); from then on WhatsApp
    messages from other senders do not reach the agent, the routed caller's do (number digits
    compared: WhatsApp names the sender without '+'); an empty list routes everyone again."""
    pnid = str(200000 + uuid.uuid4().int % 700000)
    sdk, _ = await whatsapp_agent(server, pnid)
    await sdk.send({"event": "dev.config", "callers": ["+34600111222"]})
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}  # no answer expected, none sent
    await whatsapp_from(http, pnid, "15550009999", "unrouted-words-41")
    await whatsapp_from(http, pnid, "34600111222", "routed")
    message = await sdk.wait_for("whatsapp.message")
    assert (message["text"], message["from"]) == ("routed", "34600111222")
    await sdk.send({"event": "dev.config", "callers": []})
    await sdk.send({"event": "ping"})
    await sdk.wait_for("pong")
    await whatsapp_from(http, pnid, "15550009999", "everyone again")
    assert (await sdk.wait_for("whatsapp.message"))["text"] == "everyone again"
    await sdk.close()
    assert "unrouted-words-41" not in server.log()  # the message text is not logged either
    assert "whatsapp message not routed" in server.log()


async def test_line_create_is_answered_line_created_and_a_held_number_line_conflict(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """pc.line(number) sends line.create {number, config} and waits for line.created (its ready);
    a number another live connection holds is line.error LINE_CONFLICT, a model key or a
    non-E.164 number LINE_CONFIG_ERROR (the SDK's codes, domain/line.ts); line.destroy frees it."""
    number = "+1555" + str(1000000 + uuid.uuid4().int % 8999999)
    first = await SdkClient.connect(server.url, KEY)
    await first.send({"event": "line.create", "number": number, "config": {"stt": "soniox", "voice": "mock"}})
    assert await first.wait_for("line.created") == {
        "event": "line.created",
        "number": number,
        "agent_id": "line:" + number,
    }
    phones = (await http.get("/api/sdk/phone-numbers", headers=AUTH)).json()["phones"]
    assert number in [p["number"] for p in phones]
    second = await SdkClient.connect(server.url, KEY)
    await second.send({"event": "line.create", "number": number, "config": {}})
    conflict = await second.wait_for("line.created", "line.error")
    assert (conflict["event"], conflict["number"], conflict["code"]) == (
        "line.error",
        number,
        "LINE_CONFLICT",
    )
    await second.send({"event": "line.create", "number": "+15550001234", "config": {"prompt": "hi"}})
    assert (await second.wait_for("line.error"))["code"] == "LINE_CONFIG_ERROR"
    await second.send({"event": "line.create", "number": "555-0100", "config": {}})
    assert (await second.wait_for("line.error"))["code"] == "LINE_CONFIG_ERROR"

    await first.send({"event": "line.destroy", "number": number})
    assert (await first.wait_for("line.destroyed"))["number"] == number
    await second.send({"event": "line.create", "number": number, "config": {}})
    assert (await second.wait_for("line.created", "line.error"))["event"] == "line.created"
    await first.close()
    await second.close()


async def dialer(server: ServerProcess) -> tuple[SdkClient, str, str]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "dialer-" + uuid.uuid4().hex[:6]
    number = "+1555" + str(1000000 + uuid.uuid4().int % 8999999)
    await sdk.create_agent(name)
    await sdk.send({"event": "channel.add", "agent_id": name, "type": "phone", "ref": number})
    await sdk.wait_for("channel.added")
    return sdk, name, number


def dial_frame(name: str, to: str, caller: str, **extra: Any) -> dict[str, Any]:
    # As agent.dial({to, from, greeting?}) sends it (pinecall/sdk src/domain/agent.ts).
    return {"event": "call.dial", "agent_id": name, "to": to, "from": caller, **extra}


@pytest.mark.parametrize(
    "to,reason", [("+15005550001", "busy"), ("+15005550002", "no-answer"), ("+15005550003", "failed")]
)
async def test_a_dial_that_is_not_answered_ends_with_its_reason(
    server: ServerProcess, to: str, reason: str
) -> None:
    """call.dialing, then call.ended {reason} without call.started: the SDK's dial() rejects with
    the reason (lifecycle.ts builds a Call for an outbound call that never connected)."""
    sdk, name, number = await dialer(server)
    await sdk.send(dial_frame(name, to, number))
    dialing = await sdk.wait_for("call.dialing")
    assert (dialing["agent_id"], dialing["from"], dialing["to"], dialing["direction"]) == (
        name,
        number,
        to,
        "outbound",
    )
    ended = await sdk.wait_for("call.ended", "call.started")
    assert (ended["event"], ended["call_id"], ended["reason"], ended["direction"]) == (
        "call.ended",
        dialing["call_id"],
        reason,
        "outbound",
    )
    await sdk.close()


async def test_an_answered_dial_is_a_live_call_the_mock_callee_talks_on(server: ServerProcess) -> None:
    """Any other number answers: call.started {direction: outbound, transport: phone} (dial()
    resolves), the greeting and each bot.reply are spoken (bot.speaking, bot.finished,
    message.confirmed) and the callee answers with the mock agent's speech; call.hangup ends it."""
    sdk, name, number = await dialer(server)
    await sdk.send(dial_frame(name, "+14155550123", number, greeting="Hello from the dentist."))
    dialing = await sdk.wait_for("call.dialing")
    started = await sdk.wait_for("call.started")
    assert started["call_id"] == dialing["call_id"] and started["call_id"].startswith("CA")
    assert (started["from"], started["to"], started["direction"], started["transport"]) == (
        number,
        "+14155550123",
        "outbound",
        "phone",
    )
    call_id = started["call_id"]
    assert (await sdk.wait_for("bot.speaking"))["text"] == "Hello from the dentist."
    assert (await sdk.wait_for("user.message"))["text"] == "You said: Hello from the dentist."
    await sdk.send(
        {"event": "bot.reply", "call_id": call_id, "message_id": "m-1", "text": "Is Tuesday fine?"}
    )
    assert (await sdk.wait_for("bot.speaking"))["message_id"] == "m-1"
    finished = await sdk.wait_for("bot.finished")
    assert finished["message_id"] == "m-1" and finished["duration_ms"] >= 0
    confirmed = await sdk.wait_for("message.confirmed")
    assert (confirmed["message_id"], confirmed["text"]) == ("m-1", "Is Tuesday fine?")
    said = await sdk.wait_for("user.message")
    assert (said["call_id"], said["text"]) == (call_id, "You said: Is Tuesday fine?")
    await sdk.send({"event": "call.hangup", "call_id": call_id})
    ended = await sdk.wait_for("call.ended")
    assert (ended["call_id"], ended["reason"], ended["direction"]) == (call_id, "hangup", "outbound")
    await sdk.send({"event": "bot.reply", "call_id": call_id, "text": "still there?"})
    assert (await sdk.wait_for("pong"))["code"] == "CALL_NOT_FOUND"  # ended cleanly: gone
    await sdk.close()


async def test_the_hang_up_number_answers_then_hangs_up(server: ServerProcess) -> None:
    sdk, name, number = await dialer(server)
    await sdk.send(dial_frame(name, "+15005550004", number))
    started = await sdk.wait_for("call.started")
    loop = asyncio.get_running_loop()
    at = loop.time()
    ended = await sdk.wait_for("call.ended")
    assert (ended["call_id"], ended["reason"]) == (started["call_id"], "hangup")
    assert 0.2 <= loop.time() - at <= 2.0
    await sdk.close()


async def test_a_dial_refused_before_it_rings_is_call_error(server: ServerProcess) -> None:
    """A bad 'to' or a 'from' that is not one of the agent's numbers: call.error {error, code},
    which the SDK turns into the call.ended its dial() rejects on at once (not a 30 s timeout)."""
    sdk, name, number = await dialer(server)
    for frame in (dial_frame(name, "555-0100", number), dial_frame(name, "+14155550123", "+19995550000")):
        await sdk.send(frame)
        refused = await sdk.wait_for("call.error", "call.dialing")
        assert (refused["event"], refused["code"], refused["agent_id"]) == ("call.error", "DIAL_FAILED", name)
        assert refused["error"]
    await sdk.close()


def llm_chat(session_id: str, agent_id: str, text: str) -> dict[str, Any]:
    # As ChatClient.sendMessage sends it (pinecall/sdk src/api/chat-client.ts).
    return {"event": "llm.chat", "session_id": session_id, "agent_id": agent_id, "text": text.strip()}


async def test_llm_chat_is_a_chat_turn_with_the_named_agent(
    server: ServerProcess, agent: tuple[SdkClient, str]
) -> None:
    """ChatClient (pinecall chat / pinecall test) on its own /client socket: each llm.chat is a
    user turn of one chat session with the agent (llm.chat.started, chat.message on the agent's
    side); the agent's reply comes back as llm.chat.started {model}, llm.chat.token {token, text}
    and llm.chat.done {text, model}, the events ChatClient.waitForResponse reads."""
    sdk, name = agent
    client = await SdkClient.connect(server.url, KEY)
    session_id = "test-" + uuid.uuid4().hex[:8]
    await client.send(llm_chat(session_id, name, " What is your name? "))
    opened = await sdk.wait_for("llm.chat.started")
    said = await sdk.wait_for("chat.message")
    assert said["call_id"] == opened["call_id"] and said["text"] == "What is your name?"
    await sdk.send(
        {
            "event": "bot.reply",
            "call_id": said["call_id"],
            "message_id": "r1",
            "text": "I am the agent, hello.",
        }
    )
    started = await client.wait_for("llm.chat.started")
    assert (started["session_id"], started["model"]) == (session_id, "mock")
    tokens = ""
    while True:
        frame = await client.wait_for("llm.chat.token", "llm.chat.done")
        if frame["event"] == "llm.chat.done":
            break
        tokens += frame["token"]
        assert frame["text"] == tokens  # the text so far, as the hosted stream carries it
    assert (frame["text"], frame["model"]) == ("I am the agent, hello.", "mock") and tokens == frame["text"]

    await client.send(llm_chat(session_id, name, "And again?"))  # same session: same call
    again = await sdk.wait_for("chat.message", "llm.chat.started")
    assert (again["event"], again["call_id"]) == ("chat.message", said["call_id"])
    await sdk.send({"event": "bot.reply", "call_id": said["call_id"], "text": "Yes."})
    assert (await client.wait_for("llm.chat.done"))["text"] == "Yes."

    await client.send(llm_chat("test-other", "nobody-online-here", "hi"))
    refused = await client.wait_for("llm.chat.error")
    assert refused["session_id"] == "test-other" and "nobody-online-here" in refused["error"]
    await client.send(llm_chat(session_id, name, "no answer this time"))
    await sdk.wait_for("chat.message")
    timed_out = await client.wait_for("llm.chat.error", timeout=10)  # VOICE_CHAT_REPLY_SECONDS
    assert timed_out["session_id"] == session_id and timed_out["code"] == "reply_timeout"

    await client.close()
    ended = await sdk.wait_for("call.ended")
    assert (ended["call_id"], ended["reason"]) == (said["call_id"], "client_closed")


async def test_registration_frames_up_to_a_mebibyte_register_and_larger_ones_get_an_error_frame(
    server: ServerProcess,
) -> None:
    """Issue 18 item 8: an agent.create with a long prompt (here 900 KB) registers; one over
    VOICE_CLIENT_FRAME_BYTES (1 MiB) is REGISTRATION_ERROR naming the bound (the SDK fails
    agent.ready on it at once), any other frame over it PAYLOAD_TOO_LARGE; the socket stays open
    (a 1009 close made the SDK reconnect and re-send the frame every second)."""
    sdk = await SdkClient.connect(server.url, KEY)
    name = "big-" + uuid.uuid4().hex[:6]
    created = await sdk.create_agent(
        name, prompt="p" * 900_000, tools=[{"name": "t", "description": "d" * 1000}]
    )
    assert created == {"event": "agent.created", "agent_id": name}
    other = "big-" + uuid.uuid4().hex[:6]
    await sdk.send({"event": "agent.create", "agent_id": other, "prompt": "p" * 1_200_000})
    refused = await sdk.wait_for("agent.created")
    assert (refused["event"], refused["code"], refused["agent_id"]) == ("error", "REGISTRATION_ERROR", other)
    assert "1048576" in refused["error"] and "VOICE_CLIENT_FRAME_BYTES" in refused["error"]
    await sdk.send({"event": "agent.configure", "agent_id": name, "prompt": "q" * 1_100_000})
    too_large = await sdk.wait_for("agent.configured")
    assert (too_large["code"], too_large["agent_id"]) == ("PAYLOAD_TOO_LARGE", name)
    await sdk.send({"event": "ping"})
    assert await sdk.wait_for("pong") == {"event": "pong"}
    await sdk.close()


async def test_a_retried_registration_against_a_holder_that_keeps_talking_is_fatal(
    server: ServerProcess,
) -> None:
    """Issue 18 item 9, the fatal variant: a retry of agent.create while the holder's socket has
    spoken since the first refusal (a live SDK pings every 30 s) is AGENT_CONFLICT_FATAL, on
    which the SDK stops retrying (dispatch/handlers/error.ts); the server drops the pending
    registration too, so it does not take over silently when the holder goes. A retry while the
    holder has been silent (maybe a dead peer not yet noticed) stays AGENT_IN_USE."""
    name = "held-" + uuid.uuid4().hex[:6]
    holder = await SdkClient.connect(server.url, KEY)
    await holder.create_agent(name)
    newcomer = await SdkClient.connect(server.url, KEY)
    await newcomer.send({"event": "agent.create", "agent_id": name})
    first = await newcomer.wait_for("agent.created")
    assert (first["code"], first["holder_alive"], first["retry_after_s"]) == ("AGENT_IN_USE", True, 30)
    await newcomer.send({"event": "agent.create", "agent_id": name})  # the holder said nothing
    assert (await newcomer.wait_for("agent.created"))["code"] == "AGENT_IN_USE"

    await holder.send({"event": "ping"})  # the SDK's 30 s keep-alive
    assert await holder.recv() == {"event": "pong"}
    await newcomer.send({"event": "agent.create", "agent_id": name})
    fatal = await newcomer.wait_for("agent.created")
    assert (fatal["event"], fatal["code"], fatal["agent_id"], fatal["holder_alive"]) == (
        "error",
        "AGENT_CONFLICT_FATAL",
        name,
        True,
    )
    await holder.close()
    with pytest.raises(TimeoutError):  # a registration beat (10 s TTL / 3) passes: no takeover
        await newcomer.wait_for("agent.created", timeout=4.5)
    await newcomer.send({"event": "agent.create", "agent_id": name})  # a new attempt succeeds
    assert await newcomer.wait_for("agent.created") == {"event": "agent.created", "agent_id": name}
    await newcomer.close()
