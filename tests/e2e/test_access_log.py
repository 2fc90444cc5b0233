"""The access log of a real server process: one line per request with the operator's fields,
secrets redacted, and not one line lost when SIGTERM comes right after the last response
(the buffer is written at shutdown, not only on its timer)."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
import websockets

from tests.support.procs import start_server

KEY = "sk_live_acme_0123456789abcdef0123"
ENV = {
    "VOICE_LOG_LEVEL": "INFO",
    "VOICE_TOKEN_SECRET": "access-log-secret-0123456789abcdef0123",
    "VOICE_API_KEYS": f"acme:{KEY}",
    "VOICE_RATE_LIMIT_KEY": "100000/second",
    "VOICE_MOCK_AGENT": "demo",
    "VOICE_MOCK_AGENT_ORG": "acme",
    # Longer than the test: only the shutdown write can bring the lines out.
    "VOICE_LOG_FLUSH_SECONDS": "60",
}


def _access_lines(log: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "voice.access"]


@pytest.mark.parametrize("count", [300])
async def test_every_request_has_its_line_after_sigterm(count: int) -> None:
    server = start_server(ENV)
    try:
        before = len(_access_lines(server.log()))  # the readiness probes' lines, if written yet
        auth = {"Authorization": f"Bearer {KEY}", "X-Request-Id": "trace-7"}
        async with httpx.AsyncClient(base_url=server.url) as http:
            minted = await http.get("/chat/token?agent_id=demo", headers=auth)
            assert minted.status_code == 200, minted.text
            token = minted.json()["token"]
            async with websockets.connect(f"{server.ws_url}/chat/ws?token={token}") as ws:
                assert json.loads(await ws.recv())["event"] == "chat.connected"
            refused = await http.get("/webrtc/token?agent_id=nobody&api_key=sk_live_LEAK", headers=auth)
            assert refused.status_code >= 400
            for _ in range(count - 3):
                assert (await http.get("/webrtc/token?agent_id=demo", headers=auth)).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.proc.wait(20) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
    finally:
        server.kill()
    log = server.log()
    lines = _access_lines(log)
    probes = [line for line in lines if line["path"] == "/healthz"]
    assert len(lines) - len(probes) == count and len(probes) >= before
    chat = next(line for line in lines if line["msg"] == "ws")
    assert chat["path"] == "/chat/ws?token=[redacted]" and chat["status"] == 101
    error = next(line for line in lines if str(line["path"]).startswith("/webrtc/token?agent_id=nobody"))
    assert error["path"] == "/webrtc/token?agent_id=nobody&api_key=[redacted]"
    assert isinstance(error["code"], str) and error["code"] and error["status"] == refused.status_code
    mint = lines[-1]
    assert (mint["method"], mint["status"], mint["code"], mint["client"]) == ("GET", 200, None, "127.0.0.1")
    assert mint["request_id"] == "trace-7" and isinstance(mint["ms"], float)
    assert token not in log and "LEAK" not in log and KEY not in log
