"""``/webrtc/ice-servers``, ``/webrtc/offer`` at the HTTP level, and the dev-only routes
(CONTRACT §2, §3), against real server processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.realtime.peer import BrowserPeer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_http_0123456789abcdef"
ICE = [{"urls": "turn:turn.example.com:3478", "username": "u", "credential": "c"}]
ENV = {
    "VOICE_TOKEN_SECRET": "webrtc-http-secret",
    "VOICE_API_KEYS": f"acme:{KEY}",
    "VOICE_RATE_LIMIT_KEY": "0",
    "VOICE_RATE_LIMIT_PUBLIC": "0",
    "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
}


@pytest.fixture(scope="module")
def dev_server() -> Iterator[ServerProcess]:
    proc = start_server({**ENV, "VOICE_DEV": "1", "VOICE_MAX_SESSIONS_PER_ORG": "1"})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prod_server() -> Iterator[ServerProcess]:
    proc = start_server({**ENV, "VOICE_ICE_SERVERS": json.dumps(ICE)})
    yield proc
    proc.stop()


@pytest.fixture
async def dev(dev_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=dev_server.url, timeout=15) as client:
        yield client


@pytest.fixture
async def prod(prod_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prod_server.url, timeout=15) as client:
        yield client


async def mint(http: httpx.AsyncClient, agent_id: str, channel: str = "webrtc") -> str:
    response = await http.get(
        f"/{channel}/token", params={"agent_id": agent_id}, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_ice_servers_come_from_settings(prod: httpx.AsyncClient) -> None:
    response = await prod.get("/webrtc/ice-servers", headers={"Origin": "https://shop.example"})
    assert response.json() == {"iceServers": ICE}
    assert response.headers["access-control-allow-origin"] == "https://shop.example"


async def test_no_ice_servers_is_an_empty_list(dev: httpx.AsyncClient) -> None:
    response = await dev.get("/webrtc/ice-servers")
    assert response.status_code == 200 and response.json() == {"iceServers": []}
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", ["/webrtc/offer", "/webrtc/ice-servers"])
async def test_preflight_answers_any_origin(prod: httpx.AsyncClient, path: str) -> None:
    """The preflight has no token and no agent to judge by, so every origin may POST an offer."""
    response = await prod.options(
        path,
        headers={
            "Origin": "https://anything.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://anything.example"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "Content-Type" in response.headers["access-control-allow-headers"]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"type": "offer", "token": "wrtc_x"}).encode(),
        json.dumps({"sdp": 5, "type": "offer", "token": "wrtc_x"}).encode(),
        json.dumps({"sdp": "v=0", "type": "answer", "token": "wrtc_x"}).encode(),
        json.dumps({"sdp": "v=0", "type": "offer"}).encode(),
        json.dumps({"sdp": "v=0", "type": "offer", "token": "wrtc_x", "config": "voice"}).encode(),
    ],
)
async def test_bad_offer_bodies_are_400_with_cors(prod: httpx.AsyncClient, content: bytes) -> None:
    response = await prod.post(
        "/webrtc/offer",
        content=content,
        headers={"Content-Type": "application/json", "Origin": "https://a.example"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    assert "wrtc_x" not in response.text


async def test_an_oversized_offer_is_413(prod: httpx.AsyncClient) -> None:
    response = await prod.post("/webrtc/offer", content=b"{" + b" " * 70_000 + b"}")
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


async def test_a_forged_token_is_401(prod: httpx.AsyncClient) -> None:
    peer = BrowserPeer()
    try:
        response, body = await peer.connect(prod, "wrtc_" + "A" * 80)
        assert (response.status_code, body["code"]) == (401, "token_invalid")
    finally:
        await peer.close()


async def test_an_offline_agent_is_404_and_keeps_the_token(
    prod_server: ServerProcess, prod: httpx.AsyncClient
) -> None:
    """The agent went away between mint and offer: 404 agent_not_online, and the token is not spent."""
    sdk = await SdkClient.connect(prod_server.url, KEY)
    name = "gone-" + uuid.uuid4().hex[:6]
    await sdk.create_agent(name)
    token = await mint(prod, name)
    await sdk.close()
    peer = BrowserPeer()
    try:
        for _ in range(2):
            response, body = await peer.connect(prod, token)
            assert (response.status_code, body["code"]) == (404, "agent_not_online")
            assert body["detail"] == f"Agent '{name}' is not online"
    finally:
        await peer.close()


async def test_org_at_capacity_is_503_before_the_token_is_spent(
    dev_server: ServerProcess, dev: httpx.AsyncClient
) -> None:
    """VOICE_MAX_SESSIONS_PER_ORG=1: a second session is refused (503 at_capacity) and its token
    still works once the first session is over."""
    sdk = await SdkClient.connect(dev_server.url, KEY)
    name = "busy-" + uuid.uuid4().hex[:6]
    await sdk.create_agent(name)
    first, second, third = BrowserPeer(), BrowserPeer(), BrowserPeer()
    try:
        response, _ = await first.connect(dev, await mint(dev, name))
        assert response.status_code == 200
        started = await sdk.wait_for("call.started")
        token = await mint(dev, name)
        response, body = await second.connect(dev, token)
        assert (response.status_code, body["code"]) == (503, "at_capacity")
        await sdk.send({"event": "call.hangup", "call_id": started["call_id"]})
        await sdk.wait_for("call.ended")
        response, _ = await third.connect(dev, token)
        assert response.status_code == 200
    finally:
        for peer in (first, second, third):
            await peer.close()
        await sdk.close()


async def test_demo_and_debug_are_dev_only(dev: httpx.AsyncClient, prod: httpx.AsyncClient) -> None:
    page = await dev.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/demo/demo.js" in page.text and "default-src 'none'" in page.headers["content-security-policy"]
    script = await dev.get("/demo/demo.js")
    assert script.status_code == 200 and "createDataChannel" in script.text
    assert (await dev.get("/demo/demo.py")).status_code == 404
    assert (await dev.get("/demo/..%2Fdemo.py")).status_code == 404
    assert (await dev.get("/debug/sessions")).json()["peers"] >= 0
    for path in ("/demo", "/demo/demo.js", "/debug/sessions"):
        response = await prod.get(path)
        assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_the_demo_page_loads_nothing_from_elsewhere(dev: httpx.AsyncClient) -> None:
    for path in ("/demo", "/demo/demo.js", "/demo/demo.css"):
        text = (await dev.get(path)).text
        assert "https://" not in text and "//cdn" not in text
