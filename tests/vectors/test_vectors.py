"""The published vectors (tests/vectors/*.json) against the implementation: origins and patterns,
WhatsApp signatures and token tampering through server/core, /client frames through a real server
process. ``voice-server conformance URL`` runs the HTTP-visible ones against a deployment
(tests/e2e/test_conformance.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.core.origins import origin_allowed, parse_origin, parse_pattern
from server.core.tokens import Channel, TokenCodec
from server.core.whatsapp import verify_signature
from server.errors import InvalidOriginPattern, TokenError
from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / name).read_text())
    return data


ORIGINS = load("origins.json")
SIGNATURES = load("whatsapp_signatures.json")
TOKENS = load("tokens.json")
FRAMES = load("client_frames.json")


@pytest.mark.parametrize("case", ORIGINS["headers"], ids=lambda c: repr(c["header"]))
def test_origin_header(case: dict[str, Any]) -> None:
    origin = parse_origin(case["header"])
    assert (None if origin is None else str(origin)) == case["serialized"]


@pytest.mark.parametrize("raw", ORIGINS["invalid_patterns"])
def test_invalid_pattern(raw: str) -> None:
    with pytest.raises(InvalidOriginPattern):
        parse_pattern(raw)


@pytest.mark.parametrize("case", ORIGINS["verdicts"], ids=lambda c: f"{c['pattern']} {c['origin']}")
def test_origin_verdict(case: dict[str, Any]) -> None:
    allowed = origin_allowed([parse_pattern(case["pattern"])], case["origin"]) is not None
    assert allowed is case["allowed"]


@pytest.mark.parametrize("case", SIGNATURES["cases"], ids=lambda c: c["name"])
def test_whatsapp_signature(case: dict[str, Any]) -> None:
    body = base64.b64decode(SIGNATURES["body_base64"])
    verdict = verify_signature(body, case["header"], [SIGNATURES["secret"]])
    assert (verdict.ok, verdict.reason.value) == (case["valid"], case["reason"])


@pytest.mark.parametrize("case", TOKENS["cases"], ids=lambda c: c["name"])
def test_token_case(case: dict[str, Any]) -> None:
    codec = TokenCodec([TOKENS["secret"]])
    try:
        claims = codec.decode(case["token"], Channel(case["channel"]), case["now"])
    except TokenError as exc:
        assert exc.code == case["expect"]
        return
    assert case["expect"] == "ok"
    expected = TOKENS["claims"]
    assert (claims.jti, claims.org_id, list(claims.agents), dict(claims.metadata)) == (
        expected["jti"],
        expected["org_id"],
        expected["agents"],
        expected["metadata"],
    )


KEY = "sk_test_vectors_0123456789abcdef012"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {"VOICE_TOKEN_SECRET": "vectors-secret-0123456789abcdef0123", "VOICE_API_KEYS": f"acme:{KEY}"}
    )
    yield proc
    proc.stop()


async def test_client_frames(server: ServerProcess) -> None:
    """Every frame on one connected /client socket: each gets its error frame, and the socket
    stays usable (a last agent.create succeeds)."""
    sdk = await SdkClient.connect(server.url, KEY)
    answers = []
    try:
        for case in FRAMES["frames"]:
            await sdk.ws.send(case["frame"])
            answers.append((case["frame"], (await sdk.wait_for("error"))["code"]))
        created = await sdk.create_agent("vectors-last")
    finally:
        await sdk.close()
    assert answers == [(case["frame"], case["code"]) for case in FRAMES["frames"]]
    assert created["event"] == "agent.created"
