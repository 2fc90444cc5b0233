"""DEBUG logs of a real server carry no secret (issue 15 Medium 9): not the WhatsApp
``verifyToken``/``appSecret``/``accessToken`` of a ``channel.add``, not API keys, tokens or
``Cookie``/``X-Api-Key``/``Authorization`` headers, not even a 6-character piece of one.

At DEBUG, websockets logs every handshake header and every frame, elided to its start and end;
a pattern that wanted the closing quote let a secret's tail through."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterator

import httpx
import pytest
import websockets

from server.core.whatsapp import sample_payload
from tests.support.fake_graph import FakeGraph, fake_graph
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient


def secret() -> str:
    """A value no 6-character piece of which turns up in a log by chance."""
    return secrets.token_urlsafe(24)


def pieces(value: str) -> list[str]:
    return [value[i : i + 6] for i in range(len(value) - 5)]


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with fake_graph() as g:
        yield g


async def drive_every_secret_carrying_flow(
    server: ServerProcess, api_key: str, values: dict[str, str]
) -> str:
    """SDK connect with secret headers, an agent with nested secret config, a WhatsApp channel
    with its three credentials, Meta's subscription check and a signed webhook answered through
    the Graph API, plain requests with the same headers, and a chat socket; returns the chat token."""
    headers = {
        "Cookie": f"session={values['cookie']}; theme=dark",
        "X-Api-Key": values["x_api_key"],
        "Authorization": f"Bearer {values['bearer']}",
    }
    pnid = str(100000 + secrets.randbelow(900000))
    sdk = await SdkClient.connect(server.url, api_key, headers=headers)
    try:
        llm = {
            "api_key": values["nested_api_key"],
            "auth": {"password": values["nested_password"]},
            "headers": {"X-Custom-Auth": values["nested_header"]},
        }
        assert (await sdk.create_agent("wa-agent", llm=llm))["event"] == "agent.created"
        channel = {
            "verifyToken": values["verify"],
            "appSecret": values["app"],
            "accessToken": values["access"],
        }
        await sdk.send(
            {"event": "channel.add", "agent_id": "wa-agent", "type": "whatsapp", "ref": pnid, **channel}
        )
        assert (await sdk.wait_for("channel.added"))["event"] == "channel.added"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/healthz", headers=headers)).status_code == 200
            query = {"hub.mode": "subscribe", "hub.verify_token": values["verify"], "hub.challenge": "7"}
            assert (await http.get("/whatsapp/webhook", params=query, headers=headers)).text == "7"
            body = json.dumps(sample_payload(pnid, "15550001", "hola", "wamid." + secrets.token_hex(6)))
            signature = hmac.new(values["app"].encode(), body.encode(), hashlib.sha256).hexdigest()
            webhook_headers = {
                "Content-Type": "application/json",
                "X-Hub-Signature-256": "sha256=" + signature,
            }
            response = await http.post("/whatsapp/webhook", content=body, headers=webhook_headers)
            assert response.status_code == 200, response.text
            message = await sdk.wait_for("whatsapp.message")
            await sdk.send(
                {"event": "bot.reply", "call_id": message["call_id"], "message_id": "m", "text": "hi"}
            )
            assert (await sdk.wait_for("whatsapp.response"))["event"] == "whatsapp.response"
            auth = {"Authorization": f"Bearer {api_key}"}
            token: str = (
                await http.get("/chat/token", params={"agent_id": "wa-agent"}, headers=auth)
            ).json()["token"]
        async with websockets.connect(
            f"{server.ws_url}/chat/ws?token={token}", additional_headers=headers
        ) as chat:
            assert "chat.connected" in str(await asyncio.wait_for(chat.recv(), 10))
        return token
    finally:
        await sdk.close()


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_debug_logs_carry_no_piece_of_any_secret(graph: FakeGraph, log_format: str) -> None:
    api_key = "sk_test_" + secret()
    names = ["verify", "app", "access", "cookie", "x_api_key", "bearer"]
    names += ["nested_api_key", "nested_password", "nested_header"]
    values = {name: secret() for name in names}
    server = start_server(
        {
            "VOICE_LOG_LEVEL": "DEBUG",
            "VOICE_LOG_FORMAT": log_format,
            "VOICE_TOKEN_SECRET": secret(),
            "VOICE_API_KEYS": f"acme:{api_key}",
            "VOICE_WHATSAPP_GRAPH_URL": graph.url,
        }
    )
    try:
        values["chat_token"] = (await drive_every_secret_carrying_flow(server, api_key, values))[
            len("cht_") :
        ]
    finally:
        server.stop()
    assert graph.requests[-1].headers["authorization"] == f"Bearer {values['access']}"
    values["api_key"] = api_key[len("sk_test_") :]
    log = server.log()
    # Those flows were logged at DEBUG: frames and handshake headers.
    assert "< TEXT" in log and "channel.add" in log and "< cookie: " in log.lower(), log[-3000:]
    leaked = {name: [p for p in pieces(value) if p in log] for name, value in values.items()}
    assert not any(leaked.values()), {name: found[:3] for name, found in leaked.items() if found}
