"""The rest of the voice host's surface the real clients call (README, "Wire coverage"): honest
answers where a mock has them, 501 ``not_supported`` where a provider is needed, never a 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_extras_0123456789abcdef"
OTHER = "sk_test_extras_other_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "extras-secret-0123456789abcdef0123",
            "VOICE_API_KEYS": f"acme:{KEY},other:{OTHER}",
        }
    )
    yield proc
    proc.stop()


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def test_phone_numbers_are_the_orgs_phone_channels(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    mine = await SdkClient.connect(server.url, KEY)
    await mine.create_agent("dialer")
    await mine.send({"event": "channel.add", "agent_id": "dialer", "type": "phone", "ref": "+15550100"})
    assert (await mine.wait_for("channel.added"))["event"] == "channel.added"
    theirs = await SdkClient.connect(server.url, OTHER)
    await theirs.create_agent("their-dialer")
    await theirs.send(
        {"event": "channel.add", "agent_id": "their-dialer", "type": "phone", "ref": "+15550199"}
    )
    await theirs.wait_for("channel.added")
    response = await http.get("/api/sdk/phone-numbers", headers=AUTH)
    await mine.close()
    await theirs.close()
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert [(p["number"], p["isSdk"], p["agent"]) for p in body["phones"]] == [("+15550100", True, "dialer")]
    unauthenticated = await http.get("/api/sdk/phone-numbers")
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "invalid_api_key"


async def test_the_voice_catalogue_is_the_mock_voice(http: httpx.AsyncClient) -> None:
    for path, headers in (("/api/sdk/voices?provider=elevenlabs", {}), ("/v1/audio/voices", AUTH)):
        body = (await http.get(path, headers=headers)).json()
        assert body["success"] is True
        (voice,) = body["voices"]
        assert voice["id"] == "mock" and voice["provider"] == "mock"
        assert voice["languages"][0]["code"] == "en"


async def test_memory_answers_empty_and_needs_a_key(http: httpx.AsyncClient) -> None:
    search = await http.get("/api/memory/search", params={"agent": "a", "q": "hi", "k": 6}, headers=AUTH)
    assert search.json() == {"success": True, "hits": []}
    contact = (await http.get("/api/memory/a/%2B15550100", headers=AUTH)).json()
    assert contact == {"success": True, "contact": "+15550100", "revision": 0, "facts": [], "memory_md": ""}
    assert (await http.delete("/api/memory/a/x", headers=AUTH)).json() == {
        "success": True,
        "forgotten": False,
    }
    assert (await http.get("/api/memory/search")).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "needs"),
    [
        ("POST", "/v1/audio/speech", "text-to-speech"),
        ("POST", "/v1/audio/transcriptions", "speech-to-text"),
        ("GET", "/api/sdk/twilio-balance", "Twilio"),
        ("GET", "/live/call_1/player", "telephony"),
    ],
)
async def test_provider_routes_say_501_and_why(
    http: httpx.AsyncClient, method: str, path: str, needs: str
) -> None:
    response = await http.request(method, path, headers=AUTH, json={"input": "hi", "voice": "mock"})
    assert response.status_code == 501
    body = response.json()
    assert body["code"] == "not_supported" and needs in body["detail"] and body["error"] == body["detail"]


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions/stream?model=x", "/live/call_1/ws"])
async def test_provider_websockets_refuse_the_handshake_with_the_501_body(
    server: ServerProcess, path: str
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.ws_url + path):
            pass
    assert refused.value.response.status_code == 501
    assert json.loads(bytes(refused.value.response.body or b""))["code"] == "not_supported"


async def test_dictation_gets_an_error_event_then_a_close(server: ServerProcess) -> None:
    async with websockets.connect(server.ws_url + "/api/scribe/ws?token=cht_x") as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (
            frame["event"] == "error"
            and frame["code"] == "not_supported"
            and "speech-to-text" in frame["error"]
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "not_supported"
