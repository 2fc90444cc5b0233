"""What the schema-driven fuzzing (tests/e2e/test_fuzz.py) found, each pinned against a real
server process so it cannot come back."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator

import httpx
import pytest

from server.services.history import valid_thread
from tests.support.procs import ServerProcess, start_server

KEY = "sk_test_found_0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {"VOICE_TOKEN_SECRET": "found-secret-0123456789abcdef0123456", "VOICE_API_KEYS": f"acme:{KEY}"}
    )
    yield proc
    proc.stop()


def test_webhook_405_lists_both_methods_in_allow(server: ServerProcess) -> None:
    """It listed only GET (two routes on one path each answered with their own method)."""
    response = httpx.put(server.url + "/whatsapp/webhook", timeout=5)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}


@pytest.mark.parametrize("call_id", ["call-1\n", "a" * 128 + "\n"])
def test_call_id_with_a_trailing_newline_is_refused(server: ServerProcess, call_id: str) -> None:
    """The pattern ended in ``$``, which also matches before a final newline: ``call-1\\n`` passed."""
    response = httpx.get(
        server.url + "/webrtc/token", params={"agent_id": "bot", "call_id": call_id}, headers=AUTH, timeout=5
    )
    assert response.status_code == 400
    assert response.json() == {
        "detail": "call_id must be 1-128 characters of letters, digits and _ . : -",
        "code": "bad_request",
    }


def test_webhook_challenge_with_a_trailing_newline_is_not_echoed(server: ServerProcess) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "anything", "hub.challenge": "1158201444\n"}
    response = httpx.get(server.url + "/whatsapp/webhook", params=query, timeout=5)
    assert response.status_code == 400
    assert response.json()["code"] == "bad_request"


def test_thread_id_with_a_trailing_newline_is_not_valid() -> None:
    assert valid_thread("thread-1")
    assert not valid_thread("thread-1\n")


def test_agent_info_for_an_id_without_letters_or_digits_is_a_documented_400(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/api/sdk/agent-info/%C3%BF%F0%A2%AB%A3", timeout=5)
    assert response.status_code == 400 and response.json()["code"] == "bad_request"
    document = httpx.get(server.url + "/openapi.json", timeout=5).json()
    assert "400" in document["paths"]["/api/sdk/agent-info/{agent}"]["get"]["responses"]
    assert "400" in document["paths"]["/api/sdk/agents/{slug}"]["delete"]["responses"]


def test_a_non_utf8_whatsapp_app_secret_verifies_webhooks_by_its_bytes() -> None:
    """Found by tests/properties/test_whatsapp.py: a VOICE_WHATSAPP_APP_SECRET that is not UTF-8
    (os.environ holds it surrogateescape'd) raised UnicodeEncodeError on every webhook: a 500."""
    raw_secret = b"\xffmeta-app-secret"
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "found-secret-0123456789abcdef0123456",
            "VOICE_WHATSAPP_APP_SECRET": raw_secret.decode("utf-8", "surrogateescape"),
        }
    )
    try:
        body = b'{"object":"whatsapp_business_account","entry":[]}'
        good = "sha256=" + hmac.new(raw_secret, body, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(b"other", body, hashlib.sha256).hexdigest()
        for header, status in ((good, 200), (bad, 403)):
            response = httpx.post(
                proc.url + "/whatsapp/webhook",
                content=body,
                headers={"X-Hub-Signature-256": header, "Content-Type": "application/json"},
                timeout=5,
            )
            assert response.status_code == status, response.text
    finally:
        proc.stop()


def test_an_empty_call_id_means_none_and_the_document_says_so(server: ServerProcess) -> None:
    """A longer fuzz run: ``call_id=`` is taken as no call id, which the schema's pattern refused."""
    document = httpx.get(server.url + "/openapi.json", timeout=5).json()
    for path in ("/webrtc/token", "/chat/token", "/stream/token"):
        parameters = document["paths"][path]["get"]["parameters"]
        pattern = next(p for p in parameters if p["name"] == "call_id")["schema"]["pattern"]
        assert re.search(pattern, "") and re.search(pattern, "call-1") and not re.search(pattern, "call 1")
    response = httpx.get(
        server.url + "/webrtc/token", params={"agent_id": "bot", "call_id": ""}, headers=AUTH, timeout=5
    )
    assert response.json()["code"] == "agent_not_online"  # past the call_id check
