"""/metrics: Prometheus counters for mints, consumes and refusals, and live gauges."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
import websockets

from server.cli_conformance import SDP  # a syntactically complete browser audio offer
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_metrics_0123456789abcdef"
OTHER_KEY = "sk_test_metrics_other_0123456789"  # its own rate-limit bucket


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "m-0123456789abcdef0123456789abcd",
            "VOICE_API_KEYS": f"acme:{KEY},acme:{OTHER_KEY}",
            "VOICE_RATE_LIMIT_KEY": "3/minute",
        }
    )
    yield proc
    proc.stop()


def value(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly ``labels`` (in any order), 0 when absent."""
    for line in text.splitlines():
        match = re.fullmatch(re.escape(name) + r"(?:\{(.*)\})? ([0-9.e+-]+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if found == labels:
                return float(match.group(2))
    return 0.0


async def test_counters_and_gauges(server: ServerProcess) -> None:
    sdk = await SdkClient.connect(server.url, KEY)
    await sdk.create_agent("metered")
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        token = (await http.get("/chat/token", params={"agent_id": "metered"}, headers=auth)).json()["token"]
        await http.get("/chat/token", params={"agent_id": "metered"}, headers=auth)
        await http.get("/chat/token", params={"agent_id": "metered"}, headers=auth)
        limited = await http.get("/chat/token", params={"agent_id": "metered"}, headers=auth)
        assert limited.status_code == 429
        await http.get("/chat/token", params={"agent_id": "nobody"}, headers=auth)
        async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as chat:
            await asyncio.wait_for(chat.recv(), 10)
            async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as again:
                with pytest.raises(websockets.ConnectionClosed):
                    while True:  # a refusal: its error frame, then the close
                        await asyncio.wait_for(again.recv(), 10)
            scrape = await http.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    text = scrape.text
    assert value(text, "voice_tokens_minted_total", channel="chat", path="key") == 3
    assert value(text, "voice_tokens_refused_total", stage="mint", code="rate_limited") == 1
    assert value(text, "voice_rate_limit_hits_total", bucket="key") == 1
    assert value(text, "voice_tokens_refused_total", stage="mint", code="agent_not_online") == 1
    assert value(text, "voice_tokens_consumed_total", channel="chat") == 1
    assert value(text, "voice_tokens_refused_total", stage="consume", code="token_spent") == 1
    assert value(text, "voice_sessions_live", transport="chat") == 1
    assert value(text, "voice_agents_online") == 1
    assert value(text, "voice_draining") == 0
    assert "voice_store_latency_seconds_bucket" in text
    await sdk.close()


async def test_refused_consumes_are_counted_whatever_the_reason(server: ServerProcess) -> None:
    """Forged, wrong-channel and malformed tokens are refused before the store: still counted."""
    sdk = await SdkClient.connect(server.url, OTHER_KEY)
    await sdk.create_agent("counted")
    auth = {"Authorization": f"Bearer {OTHER_KEY}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        before = (await http.get("/metrics")).text
        chat = (await http.get("/chat/token", params={"agent_id": "counted"}, headers=auth)).json()["token"]
        body, _, signature = chat.rpartition(".")
        forged = body + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
        for token in (forged, "cht_not-a-token"):
            async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    while True:  # a refusal: its error frame, then the close
                        await asyncio.wait_for(ws.recv(), 10)
        offer = await http.post("/webrtc/offer", json={"token": chat, "sdp": SDP, "type": "offer"})
        assert offer.status_code == 403, offer.text
        after = (await http.get("/metrics")).text
    await sdk.close()

    def grew(code: str) -> float:
        labels = {"stage": "consume", "code": code}
        return value(after, "voice_tokens_refused_total", **labels) - value(
            before, "voice_tokens_refused_total", **labels
        )

    assert grew("token_invalid") == 2
    assert grew("token_wrong_channel") == 1


async def test_label_values_are_identifiers_and_no_created_series(server: ServerProcess) -> None:
    """Issue 14: `verdict="refused_no match"` (a space) and a `_created` series per counter."""
    sdk = await SdkClient.connect(server.url, OTHER_KEY)
    await sdk.create_agent("webhooked")
    await sdk.send(
        {
            "event": "channel.add",
            "agent_id": "webhooked",
            "type": "whatsapp",
            "ref": "5550001",
            "appSecret": "s3",
        }
    )
    assert (await sdk.wait_for("channel.added"))["event"] == "channel.added"
    body = b'{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"5550001"}}}]}]}'
    async with httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.post(
            "/whatsapp/webhook", content=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}
        )
        assert refused.status_code == 403, refused.text
        text = (await http.get("/metrics")).text
    await sdk.close()
    assert value(text, "voice_webhook_verdicts_total", verdict="refused_no_match") == 1
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in samples if "_created" in line.split(" ")[0]]
    for labels in re.findall(r"\{(.*)\}", text):
        for label, found in re.findall(r'(\w+)="([^"]*)"', labels):
            assert re.fullmatch(r"[A-Za-z0-9_.:/+-]*", found), (label, found)  # le="+Inf" too
