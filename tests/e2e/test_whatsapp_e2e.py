"""WhatsApp end to end: the real server process, an SDK agent over /client, Meta's webhook over
HTTP, replies to a fake Graph API on loopback, and the ``voice-server whatsapp`` CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from server.core.whatsapp import sample_payload
from tests.support.fake_graph import FakeGraph, fake_graph
from tests.support.procs import ROOT, ServerProcess, start_server
from tests.support.sdk import SdkClient

API_KEY = "sk_test_whatsapp_0123456789"
SERVER_SECRET = "server-wide-app-secret"
CHANNEL_SECRET = "channel-app-secret"


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def graph() -> Iterator[FakeGraph]:
    with fake_graph() as g:
        yield g


@pytest.fixture(scope="module")
def server(graph: FakeGraph) -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_DEV": "1",
            "VOICE_API_KEYS": f"org:{API_KEY}",
            "VOICE_WHATSAPP_GRAPH_URL": graph.url,
            "VOICE_WHATSAPP_VERIFY_TOKEN": "server-verify-token",
            "VOICE_WHATSAPP_APP_SECRET": SERVER_SECRET,
            "VOICE_WHATSAPP_MAX_BODY": "65536",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def agent_with_number(server: ServerProcess, number: str, **channel: str) -> SdkClient:
    sdk = await SdkClient.connect(server.url, API_KEY)
    agent = "wa-" + secrets.token_hex(4)
    await sdk.create_agent(agent)
    frame = {"event": "channel.add", "agent_id": agent, "type": "whatsapp", "ref": number, **channel}
    await sdk.send(frame)
    assert (await sdk.wait_for("channel.added"))["event"] == "channel.added"
    return sdk


def number() -> str:
    return str(100000 + secrets.randbelow(900000))


def body_for(pnid: str, text: str = "hola", sender: str = "15550001") -> bytes:
    return json.dumps(sample_payload(pnid, sender, text, "wamid." + secrets.token_hex(6))).encode()


async def post(http: httpx.AsyncClient, body: bytes, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["X-Hub-Signature-256"] = header
    return await http.post("/whatsapp/webhook", content=body, headers=headers)


async def test_challenge_is_echoed_for_the_server_token_and_a_channel_token(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": "server-verify-token",
        "hub.challenge": "1158201444",
    }
    response = await http.get("/whatsapp/webhook", params=query)
    assert response.status_code == 200 and response.text == "1158201444"
    assert response.headers["content-type"].startswith("text/plain")
    sdk = await agent_with_number(server, number(), accessToken="t", verifyToken="channel-vt")
    try:
        response = await http.get("/whatsapp/webhook", params={**query, "hub.verify_token": "channel-vt"})
        assert response.status_code == 200 and response.text == "1158201444"
    finally:
        await sdk.close()


async def test_wrong_verify_token_is_403(http: httpx.AsyncClient) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}
    response = await http.get("/whatsapp/webhook", params=query)
    assert response.status_code == 403 and response.json()["code"] == "verify_token_invalid"


async def test_signed_message_reaches_the_agent_and_its_reply_reaches_graph(
    server: ServerProcess, http: httpx.AsyncClient, graph: FakeGraph
) -> None:
    pnid = number()
    sdk = await agent_with_number(server, pnid, accessToken="EAAG-e2e", appSecret=CHANNEL_SECRET)
    try:
        body = b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
        body += b'"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"' + pnid.encode()
        body += (
            b'"},"contacts":[{"profile":{"name":"Jos\\u00e9"},"wa_id":"34600111222"}],"messages":[{"from":'
        )
        body += b'"34600111222","id":"wamid.e2e-' + secrets.token_hex(4).encode() + b'","timestamp":"1",'
        body += b'"type":"text","text":{"body":"caf\\u00e9 @ 10"}}]}}]}]}'
        response = await post(http, body, signature(body, CHANNEL_SECRET))
        assert response.status_code == 200, response.text
        started = await sdk.wait_for("whatsapp.session_started")
        assert started["contact_name"] == "José" and started["call_id"].startswith("wa-")
        message = await sdk.wait_for("whatsapp.message")
        assert message["text"] == "café @ 10" and message["from"] == "34600111222"
        before = len(graph.requests)
        await sdk.send(
            {"event": "bot.reply", "call_id": message["call_id"], "message_id": "m1", "text": "¡Hola!"}
        )
        reply = await sdk.wait_for("whatsapp.response")
        assert reply["event"] == "whatsapp.response" and reply["call_id"] == message["call_id"]
        request = (await graph.await_requests(before + 1))[before]
        assert (
            request.path == f"/v21.0/{pnid}/messages"
            and request.headers["authorization"] == "Bearer EAAG-e2e"
        )
        assert request.body["to"] == "34600111222" and request.body["text"]["body"] == "¡Hola!"
        # Meta redelivers: the agent does not see it again.
        assert (await post(http, body, signature(body, CHANNEL_SECRET))).status_code == 200
        await sdk.send({"event": "ping"})
        assert (await sdk.wait_for("pong", "whatsapp.message"))["event"] == "pong"
    finally:
        await sdk.close()


async def test_the_sdk_session_id_takes_replies_and_history_and_messages_carry_name_and_paused(
    server: ServerProcess, http: httpx.AsyncClient, graph: FakeGraph
) -> None:
    """The SDK keys its WhatsApp ``Call`` and ``WhatsAppSession`` by ``session_id``
    (dispatch/handlers/whatsapp.ts) and sends every command with ``call_id: <session_id>``:
    ``call.reply()`` a ``bot.reply`` (domain/call.ts), ``session.setHistory()`` a ``history.set``
    whose ``history.updated`` it routes back by a ``wa-`` call id and ``request_id``
    (kernel/requester.ts, dispatch/handlers/history.ts). Issue 18 item 3."""
    pnid = number()
    sdk = await agent_with_number(server, pnid, accessToken="EAAG-sdk", appSecret=CHANNEL_SECRET)
    try:
        payload = sample_payload(pnid, "34600999000", "hola", "wamid.s-" + secrets.token_hex(4), "Ana")
        body = json.dumps(payload).encode()
        response = await post(http, body, signature(body, CHANNEL_SECRET))
        assert response.status_code == 200, response.text
        started = await sdk.wait_for("whatsapp.session_started")
        session_id = started["session_id"]
        assert session_id.startswith("wa-") and session_id == started["call_id"]
        message = await sdk.wait_for("whatsapp.message")
        assert message["session_id"] == session_id and message["name"] == "Ana"
        assert message["paused"] is False and message["contact_name"] == "Ana"
        # session.setHistory(...), exactly as WhatsAppSession sends it.
        history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "noted"}]
        await sdk.send(
            {"event": "history.set", "call_id": session_id, "request_id": "rq_1_abc", "messages": history}
        )
        updated = await sdk.wait_for("history.updated")
        assert updated["call_id"] == session_id and updated["request_id"] == "rq_1_abc"
        assert "error" not in updated and updated["count"] == 2
        # call.reply("..."), exactly as the SDK's Call sends it.
        before = len(graph.requests)
        await sdk.send(
            {
                "event": "bot.reply",
                "call_id": session_id,
                "message_id": "msg_sdk1",
                "text": "¡Hola Ana!",
                "in_reply_to": message["message_id"],
            }
        )
        reply = await sdk.wait_for("whatsapp.response")
        assert reply["event"] == "whatsapp.response" and reply["session_id"] == session_id
        assert reply["to"] == "34600999000"
        request = (await graph.await_requests(before + 1))[before]
        assert request.body["to"] == "34600999000" and request.body["text"]["body"] == "¡Hola Ana!"
        # session.getHistory(): what was set, then the reply the agent sent.
        await sdk.send({"event": "history.get", "call_id": session_id, "request_id": "rq_2_abc"})
        data = await sdk.wait_for("history.data")
        assert data["call_id"] == session_id and data["request_id"] == "rq_2_abc"
        assert [(m["role"], m["content"]) for m in data["messages"]] == [
            ("user", "earlier"),
            ("assistant", "noted"),
            ("assistant", "¡Hola Ana!"),
        ]
        # call.hangup ends the conversation under the same id.
        await sdk.send({"event": "call.hangup", "call_id": session_id})
        ended = await sdk.wait_for("whatsapp.session_ended")
        assert ended["session_id"] == session_id and ended["reason"] == "hangup"
    finally:
        await sdk.close()


async def test_bad_signatures_are_403_and_the_log_says_why_without_secrets(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    pnid = number()
    sdk = await agent_with_number(server, pnid, accessToken="t", appSecret=CHANNEL_SECRET)
    try:
        body = body_for(pnid)
        cases = {
            "no match": signature(body + b"x", CHANNEL_SECRET),
            "missing header": None,
            "bad format": "sha1=" + hashlib.sha1(body).hexdigest(),
        }
        for header in cases.values():
            response = await post(http, body, header)
            assert response.status_code == 403 and response.json()["code"] == "signature_invalid"
        await sdk.send({"event": "ping"})
        assert (await sdk.wait_for("pong", "whatsapp.message", "whatsapp.session_started"))["event"] == "pong"
        log = server.log()
        for reason in cases:
            assert f"X-Hub-Signature-256 {reason}" in log
        assert CHANNEL_SECRET not in log and SERVER_SECRET not in log and "EAAG" not in log
    finally:
        await sdk.close()


async def test_body_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    response = await post(http, b"x" * 70000, None)
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


async def test_message_for_an_offline_number_arrives_when_the_agent_registers(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    pnid = number()
    body = body_for(pnid, text="are you there?")
    response = await post(http, body, signature(body, SERVER_SECRET))
    assert response.status_code == 200
    sdk = await agent_with_number(server, pnid, accessToken="t")
    try:
        assert (await sdk.wait_for("whatsapp.message"))["text"] == "are you there?"
    finally:
        await sdk.close()


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_cli_sign_prints_the_hmac_of_the_exact_stdin_bytes() -> None:
    body = b'{"text":"caf\\u00e9 @ 10"}\n'
    result = cli("whatsapp", "sign", "--secret", "s3cret", stdin=body)
    assert result.returncode == 0
    assert result.stdout.decode().strip() == signature(body, "s3cret")


async def test_cli_send_posts_a_signed_sample_the_agent_receives(server: ServerProcess) -> None:
    pnid = number()
    sdk = await agent_with_number(server, pnid, accessToken="t", appSecret=CHANNEL_SECRET)
    try:
        args = ["whatsapp", "send", "--url", server.url, "--phone-number-id", pnid, "--text", "from the CLI"]
        result = cli(*args, "--secret", CHANNEL_SECRET)
        assert result.returncode == 0 and result.stdout.decode().startswith("200")
        assert (await sdk.wait_for("whatsapp.message"))["text"] == "from the CLI"
        unsigned = cli(*args)
        assert unsigned.returncode == 1 and "403" in unsigned.stdout.decode()
    finally:
        await sdk.close()
