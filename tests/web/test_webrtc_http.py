"""``/webrtc/ice-servers``, ``/webrtc/offer`` at the HTTP level, and the dev-only routes
(CONTRACT §2, §3), against real server processes."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from aiortc import RTCSessionDescription

from tests.realtime.peer import BrowserPeer
from tests.support.procs import RedisProcess, ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_http_0123456789abcdef"
ICE = [{"urls": "turn:turn.example.com:3478", "username": "u", "credential": "c"}]
ENV = {
    "VOICE_TOKEN_SECRET": "webrtc-http-secret-0123456789abc",
    "VOICE_API_KEYS": f"acme:{KEY}",
    "VOICE_RATE_LIMIT_KEY": "0",
    "VOICE_RATE_LIMIT_PUBLIC": "0",
    "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
}
RACERS = 8


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


@pytest.fixture(scope="module", params=["node-limit-memory", "org-limit-redis"])
def one_slot_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A node with one session slot: VOICE_MAX_SESSIONS=1 on the embedded store, or
    VOICE_MAX_SESSIONS_PER_ORG=1 with a real redis-server as the store."""
    if request.param == "node-limit-memory":
        limit = {"VOICE_MAX_SESSIONS": "1"}
    else:
        redis: RedisProcess = request.getfixturevalue("redis_server")
        limit = {"VOICE_MAX_SESSIONS_PER_ORG": "1", "VOICE_STORE_URL": redis.url}
    proc = start_server({**ENV, "VOICE_DEV": "1", **limit})
    yield proc
    proc.stop()


def consumed(metrics: str) -> int:
    found = re.search(r'^voice_tokens_consumed_total\{channel="webrtc"\} (\S+)$', metrics, re.M)
    return int(float(found.group(1))) if found else 0


async def hang_up(sdk: SdkClient) -> None:
    started = await sdk.wait_for("call.started")
    await sdk.send({"event": "call.hangup", "call_id": started["call_id"]})
    ended = await sdk.wait_for("call.ended")
    assert ended["call_id"] == started["call_id"]


async def test_offers_racing_for_the_last_slot_spend_one_token_and_build_one_peer(
    one_slot_server: ServerProcess,
) -> None:
    """RACERS offers at once for one free slot (issue 16): one session; every loser is refused
    503 at_capacity before its token is consumed and before a peer is built for it, so each
    loser's token opens a session of its own once the winner's has ended."""
    async with httpx.AsyncClient(base_url=one_slot_server.url, timeout=30) as http:
        sdk = await SdkClient.connect(one_slot_server.url, KEY)
        name = "race-" + uuid.uuid4().hex[:6]
        await sdk.create_agent(name)
        tokens = [await mint(http, name) for _ in range(RACERS)]
        racers = [BrowserPeer() for _ in range(RACERS)]
        later: list[BrowserPeer] = []
        try:
            # Every offer is gathered first, so the requests reach the server together.
            sdps = [await peer.offer_sdp() for peer in racers]
            bodies = [{"sdp": sdp, "type": "offer", "token": t} for sdp, t in zip(sdps, tokens, strict=True)]
            responses = await asyncio.gather(*(http.post("/webrtc/offer", json=b) for b in bodies))
            codes = [r.json().get("code", "answered") for r in responses]
            counts = (await http.get("/debug/sessions")).json()
            race = {
                "answered": codes.count("answered"),
                "at_capacity": codes.count("at_capacity"),
                "sessions": counts["sessions"],
                "peers_built": counts["peers_built"],
                "tokens_consumed": consumed((await http.get("/metrics")).text),
            }
            winner = codes.index("answered")
            answer = responses[winner].json()
            await racers[winner].pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await hang_up(sdk)
            reused = []  # what each loser's token gets on its own, one after another
            for token, code in zip(tokens, codes, strict=True):
                if code == "answered":
                    continue
                later.append(BrowserPeer())
                response, body = await later[-1].connect(http, token)
                reused.append(body.get("code", "answered"))
                if response.status_code == 200:
                    await hang_up(sdk)
            assert {**race, "losers_reused": reused.count("answered")} == {
                "answered": 1,
                "at_capacity": RACERS - 1,
                "sessions": 1,
                "peers_built": 1,
                "tokens_consumed": 1,
                "losers_reused": RACERS - 1,
            }, reused
        finally:
            for peer in racers + later:
                await peer.close()
            await sdk.close()


async def test_offers_refused_while_holding_the_last_slot_release_it(one_slot_server: ServerProcess) -> None:
    """An offer refused after its slot was reserved (agent gone: 404, token spent: 409) gives the
    slot back: the next good offer is answered, not 503."""
    async with httpx.AsyncClient(base_url=one_slot_server.url, timeout=30) as http:
        gone = await SdkClient.connect(one_slot_server.url, KEY)
        gone_name = "gone-" + uuid.uuid4().hex[:6]
        await gone.create_agent(gone_name)
        offline = await mint(http, gone_name)
        await gone.close()
        sdk = await SdkClient.connect(one_slot_server.url, KEY)
        name = "slot-" + uuid.uuid4().hex[:6]
        await sdk.create_agent(name)
        used, fresh = await mint(http, name), await mint(http, name)
        peers = [BrowserPeer() for _ in range(4)]
        try:
            response, _ = await peers[0].connect(http, used)
            assert response.status_code == 200
            await hang_up(sdk)
            refused = [(await peers[1].connect(http, offline))[1], (await peers[2].connect(http, used))[1]]
            assert [body["code"] for body in refused] == ["agent_not_online", "token_spent"]
            response, _ = await peers[3].connect(http, fresh)
            assert response.status_code == 200
            assert (await http.get("/debug/sessions")).json()["sessions"] == 1
            await hang_up(sdk)
        finally:
            for peer in peers:
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


async def test_a_session_whose_media_never_connects_is_ended_and_its_slot_freed() -> None:
    """Issue 14 item 3: a peer that never completed ICE held its slot until the idle timeout
    (300 s). Here the browser posts its offer and never applies the answer: no media can flow."""
    proc = start_server(
        {**ENV, "VOICE_DEV": "1", "VOICE_MAX_SESSIONS_PER_ORG": "1", "VOICE_RTC_CONNECT_SECONDS": "2"}
    )
    try:
        sdk = await SdkClient.connect(proc.url, KEY)
        await sdk.create_agent("unreached")
        async with httpx.AsyncClient(base_url=proc.url, timeout=15) as http:
            peer = BrowserPeer()
            offer = {"sdp": await peer.offer_sdp(), "type": "offer", "token": await mint(http, "unreached")}
            assert (await http.post("/webrtc/offer", json=offer)).status_code == 200  # answer never applied
            started = await sdk.wait_for("call.started")
            ended = await sdk.wait_for("call.ended", timeout=10)
            assert (ended["call_id"], ended["reason"]) == (started["call_id"], "connect_timeout")
            assert ended["duration_seconds"] < 5
            live = (await http.get("/debug/sessions")).json()
            assert live["sessions"] == 0 and live["peers"] == 0
            # The org's one slot is free again: a real session starts.
            retry = BrowserPeer()
            response, _ = await retry.connect(http, await mint(http, "unreached"))
            assert response.status_code == 200
            await retry.opened.wait()
            await retry.close()
            await peer.close()
        await sdk.close()
    finally:
        proc.stop()
