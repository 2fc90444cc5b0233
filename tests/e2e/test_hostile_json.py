"""Hostile JSON on every unauthenticated parser of a real server process (issue 15): deep
nesting, NaN/Infinity and lone surrogates get a clear 400 / error frame, never a 500 or a 1006."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.procs import ServerProcess, start_server

KEY = "sk_test_hostile_0123456789abcdef"
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {"VOICE_TOKEN_SECRET": "hostile-json-secret-0123456789abcdef", "VOICE_API_KEYS": f"acme:{KEY}"}
    )
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize(
    "body",
    [
        "[" * 20_000 + "]" * 20_000,
        '{"sdp": "v=0", "type": "offer", "token": "x", "metadata": '
        + '{"a":' * 3000
        + "1"
        + "}" * 3000
        + "}",
        '{"sdp": "v=0", "type": "offer", "token": "x", "metadata": {"n": NaN}}',
        '{"sdp": "v=0", "type": "offer", "token": "x", "metadata": {"name": "\\ud800"}}',
    ],
)
def test_a_hostile_offer_is_a_400(server: ServerProcess, body: str) -> None:
    answer = httpx.post(
        server.url + "/webrtc/offer", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"


def test_a_deep_webhook_is_refused_cleanly(server: ServerProcess) -> None:
    answer = httpx.post(server.url + "/whatsapp/webhook", content=DEEP[:200_000])
    assert answer.status_code < 500 and "code" in answer.json()


@pytest.mark.parametrize(
    "frame", ['{"event": "connect", "api_key": ' + DEEP[:60_000] + "}", '{"event": NaN}']
)
async def test_a_hostile_handshake_gets_an_error_frame_and_a_clean_close(
    server: ServerProcess, frame: str
) -> None:
    async with websockets.connect(server.ws_url + "/client") as ws:
        await ws.send(frame)
        error = json.loads(await ws.recv())
        assert error["event"] == "error" and error["code"] == "BAD_REQUEST"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_nan_in_a_frame_never_reaches_the_agent(server: ServerProcess) -> None:
    async with websockets.connect(server.ws_url + "/client") as ws:
        await ws.send(json.dumps({"event": "connect", "api_key": KEY}))
        assert json.loads(await ws.recv())["event"] == "connected"
        await ws.send('{"event": "agent.create", "agent_id": "nan-agent", "temperature": NaN}')
        error = json.loads(await ws.recv())
        assert error["event"] == "error" and error["code"] == "BAD_REQUEST"
