"""Errors a browser page can see (issue 18 item 4), on a real server process.

* A refused chat token gets the ``error`` frame the web client's ChatSession waits for
  (pinecall/web src/chat/ChatSession.ts: ``case "error"`` sets status "error" with ``d.error``),
  then the 1008 close naming the code; a close alone left the page ``connecting``.
* Every refused mint carries ``Access-Control-Allow-Origin`` for the page's origin, so the page
  reads ``detail``/``code`` (ChatSession reads the body of a refused mint) instead of
  "Failed to fetch"; a token still goes to matching origins only.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Origin

from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_browser_errors_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PAGE = "http://localhost:5173"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "browser-errors-secret-0123456789abcdef",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_PUBLIC": "3/minute",
            "VOICE_TRUSTED_PROXIES": "127.0.0.1/32",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def client_ip() -> dict[str, str]:
    """A fresh client IP (behind the trusted proxy) so each test has its own public buckets."""
    return {
        "X-Forwarded-For": f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    }


async def agent(server: ServerProcess, **config: Any) -> tuple[str, SdkClient]:
    sdk = await SdkClient.connect(server.url, KEY)
    name = "page-" + secrets.token_hex(4)
    assert (await sdk.create_agent(name, **config))["event"] == "agent.created"
    return name, sdk


async def refusal(url: str) -> tuple[dict[str, Any], int, str]:
    """A browser's refusal (it sends an Origin): the frames before the close (exactly one), and
    the close code and reason. Without an Origin the close comes first (CONTRACT §4)."""
    async with websockets.connect(url) as ws:
        with pytest.raises(websockets.ConnectionClosed) as bare:
            await asyncio.wait_for(ws.recv(), 10)
    assert bare.value.rcvd is not None
    frames = []
    async with websockets.connect(url, origin=Origin(PAGE)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    assert len(frames) == 1, frames
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        bare.value.rcvd.code,
        bare.value.rcvd.reason,
    )
    return frames[0], closed.value.rcvd.code, closed.value.rcvd.reason


async def test_a_refused_chat_token_gets_an_error_frame_then_the_close(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name, sdk = await agent(server)
    try:

        async def mint(channel: str) -> str:
            response = await http.get(f"/{channel}/token", params={"agent_id": name}, headers=AUTH)
            token: str = response.json()["token"]
            return token

        spent = await mint("chat")
        async with websockets.connect(f"{server.ws_url}/chat/ws?token={spent}") as ws:
            assert json.loads(await ws.recv())["event"] == "chat.connected"
        good = await mint("chat")
        cases = {
            f"token={spent}": "token_spent",
            "token=cht_forged.AAAA": "token_invalid",
            f"token={await mint('webrtc')}": "token_wrong_channel",
            "": "token_invalid",
            f"token={good}&thread=no%20spaces": "bad_request",
        }
        for query, code in cases.items():
            frame, close_code, reason = await refusal(f"{server.ws_url}/chat/ws?{query}")
            assert (close_code, reason) == (1008, code), query
            assert frame["event"] == "error" and frame["code"] == code, frame
            assert isinstance(frame["error"], str) and frame["error"], frame
        # The bad-thread refusal spent nothing: the token still opens a session.
        async with websockets.connect(f"{server.ws_url}/chat/ws?token={good}") as ws:
            assert json.loads(await ws.recv())["event"] == "chat.connected"
    finally:
        await sdk.close()


def assert_readable(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert response.headers["access-control-allow-origin"] == PAGE, response.headers
    assert response.headers["vary"] == "Origin"
    assert "token" not in response.json() and response.json()["detail"]


def assert_private(response: httpx.Response, status: int, code: str) -> None:
    """A refusal of the origin or the credential: for matching origins only (CONTRACT §5)."""
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert "access-control-allow-origin" not in response.headers, response.headers
    assert response.headers["vary"] == "Origin"


async def test_every_refused_mint_is_readable_by_the_page(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    page = {"Origin": PAGE, **client_ip()}
    public, sdk = await agent(server, allowed_origins=["https://shop.example"])
    private, sdk2 = await agent(server)
    try:
        offline = await http.get("/chat/token", params={"agent_id": "nobody-here"}, headers=page)
        assert_readable(offline, 404, "agent_not_online")
        assert offline.json()["detail"] == "Agent 'nobody-here' is not online"
        not_public = await http.get("/chat/token", params={"agent_id": private}, headers=page)
        assert_private(not_public, 403, "agent_not_public")
        wrong_origin = await http.get("/webrtc/token", params={"agent_id": public}, headers=page)
        assert_private(wrong_origin, 403, "origin_not_allowed")
        bad_key = {**page, "Authorization": "Bearer sk_test_not_a_key_at_all_0000"}
        assert_private(
            await http.get("/chat/token", params={"agent_id": public}, headers=bad_key),
            401,
            "invalid_api_key",
        )
        pk = {**page, "Authorization": "Bearer pk_publishable_unknown_000000"}
        assert_private(
            await http.get("/chat/token", params={"agent_id": public}, headers=pk), 401, "invalid_api_key"
        )
        assert_readable(await http.get("/chat/token", headers=page), 400, "bad_request")
        # The probe bucket (3/minute per client IP) is spent by the two refusals above: a 429,
        # whose Retry-After the page may read too.
        for _ in range(3):
            limited = await http.get("/chat/token", params={"agent_id": "nobody-here"}, headers=page)
        assert_readable(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        assert "retry-after" in limited.headers["access-control-expose-headers"].lower()
        # A token still goes to matching origins only.
        shop = {"Origin": "https://shop.example", **client_ip()}
        minted = await http.get("/chat/token", params={"agent_id": public}, headers=shop)
        assert (
            minted.status_code == 200
            and minted.headers["access-control-allow-origin"] == "https://shop.example"
        )
    finally:
        await sdk.close()
        await sdk2.close()


@pytest.mark.parametrize("origin", ["null", "https://shop.example/", "https://a@shop.example", ""])
async def test_a_malformed_origin_gets_no_cors_on_a_refusal(
    server: ServerProcess, http: httpx.AsyncClient, origin: str
) -> None:
    response = await http.get(
        "/chat/token", params={"agent_id": "nobody-here"}, headers={"Origin": origin, **client_ip()}
    )
    assert response.status_code == 404 and "access-control-allow-origin" not in response.headers
