"""Secrets are redacted by field name at any depth and in any spelling, headers by allow-list
(issue 15 Medium 9)."""

from __future__ import annotations

import json

import pytest

from server.core.redaction import (
    REDACTED,
    header_value,
    redact_data,
    redact_frame,
    redact_headers,
    redact_target,
    redact_text,
    secret_name,
)

SECRET = "s3cr3tVALUEqwerty"


@pytest.mark.parametrize(
    "name",
    [
        "verifyToken", "verify_token", "hub.verify_token", "X-Verify-Token",
        "appSecret", "app_secret", "client_secret", "accessToken", "access_token", "token",
        "api_key", "apiKey", "X-Api-Key", "password", "Authorization", "proxy-authorization",
        "Cookie", "Set-Cookie", "secret", "auth", "private_key",
    ],
)  # fmt: skip
def test_secret_names_in_any_spelling(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", ["agent_id", "call_id", "max_tokens", "token_ttl", "ref", "type", "key_id"])
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not secret_name(name)


def test_nested_structures_are_redacted_by_field_name() -> None:
    data = {
        "event": "channel.add",
        "verifyToken": SECRET,
        "config": {"llm": {"api_key": SECRET, "model": "m"}, "list": [{"app_secret": SECRET}]},
        "headers": {"Content-Type": "application/json", "X-Custom": SECRET},
        "pairs": ({"accessToken": SECRET},),
        "path": "/chat/ws?token=" + SECRET,
    }
    cleaned = redact_data(data)
    assert SECRET not in json.dumps(cleaned)
    assert cleaned["config"]["llm"]["model"] == "m" and cleaned["event"] == "channel.add"
    assert cleaned["headers"] == {"Content-Type": "application/json", "X-Custom": REDACTED}
    assert data["verifyToken"] == SECRET  # a copy: the caller's data is untouched


def test_headers_off_the_allow_list_are_redacted() -> None:
    headers = [(b"host", b"example.com"), (b"cookie", b"a=1; b=2"), (b"x-api-key", b"k"), (b"x-new", b"v")]
    assert redact_headers(headers) == [
        ("host", "example.com"),
        ("cookie", REDACTED),
        ("x-api-key", REDACTED),
        ("x-new", REDACTED),
    ]
    assert header_value("User-Agent", "curl/8") == "curl/8"
    assert header_value("Authorization", "Bearer x") == REDACTED


@pytest.mark.parametrize(
    "text",
    [
        f'{{"verifyToken": "{SECRET}", "ok": 1}}',
        f'{{"verify_token":"{SECRET}"}}',
        f"{{'appSecret': '{SECRET}'}}",  # a Python repr
        f'{{"event": "channel.add", "accessToken": "{SECRET}',  # cut short by an elision
        f"hub.mode=subscribe&hub.verify_token={SECRET}&hub.challenge=1",
        f"Cookie: session={SECRET}; theme=dark",
        f"X-Api-Key: {SECRET}",
        f"authorization=Bearer {SECRET}",
        f"Authorization: Basic {SECRET}",
        f"path=/chat/ws?token={SECRET}",
        f'{{"path": "/chat/ws?thread=1&token={SECRET}"}}',
        f"connecting to redis://default:{SECRET}@cache:6379/0",
        f"password={SECRET} user=bob",
        # Browser-chosen chat thread ids work like passwords (issue 15 low: logged in clear).
        f"GET /chat/ws?token=cht_x.y&thread={SECRET} HTTP/1.1",
        f'{{"event": "llm.chat.started", "thread": "{SECRET}"}}',
        f'{{"metadata": {{"threadId": "{SECRET}"}}}}',
    ],
)
def test_text_loses_every_named_secret(text: str) -> None:
    cleaned = redact_text(text)
    assert SECRET not in cleaned and SECRET[:6] not in cleaned, cleaned
    assert REDACTED in cleaned


def test_text_without_secrets_is_unchanged() -> None:
    for text in ("agent demo online", "X-Hub-Signature-256 no match", "max_tokens=100 ref=1234", "http"):
        assert redact_text(text) == text


def test_a_frame_is_redacted_whole_before_it_is_shortened() -> None:
    """websockets elides the middle of a long frame; a secret's tail then stood alone."""
    frame = {"event": "channel.add", "agent_id": "a" * 200, "accessToken": SECRET}
    shown = redact_frame("TEXT", json.dumps(frame).encode())
    assert SECRET[-6:] not in shown and "channel.add" in shown and shown.endswith("bytes]")
    assert redact_frame("TEXT", json.dumps({"event": "x" * 2000}).encode()).count("x") <= 600


@pytest.mark.parametrize(
    ("opcode", "data", "fin"),
    [("TEXT", b'{"token": "abc', False), ("CONT", b'def"}', True), ("BINARY", b"\x00\xff", True)],
)
def test_fragments_and_non_json_frames_show_their_size_only(opcode: str, data: bytes, fin: bool) -> None:
    assert redact_frame(opcode, data, fin) == f"{opcode} (not a JSON document) [{len(data)} bytes]"


TARGETS = [
    ("/webrtc/token", "agent_id=bench"),
    ("/webrtc/token", ""),
    ("/chat/ws", "token=cht_abc.def"),
    ("/chat/ws", "TOKEN=abc&x=1"),
    ("/healthz", "api_key=sk_live_x"),
    ("/healthz", "x=sk_live_abcdef"),
    ("/healthz", "x=pk_publishable_abc&y=wrtc_1"),
    ("/a", "u=redis://user:pw@host/0"),
    ("/a", "q=Bearer%20abc&auth=1"),
    ("/a", "verifyToken=v&hub.verify_token=w&hub.mode=subscribe"),
    ("/a", "thread=t1;x=2"),
    ("/a", "basic=1&n=stm_zz"),
    ("/api/sdk/agents/sk_live_inpath", "x=1"),
    ("/api/sdk/agents/demo", "password=p"),
    ("/x/cookie", "a=b"),
    ("/", "plain=value&other=thing&z="),
]


@pytest.mark.parametrize(("path", "query"), TARGETS)
def test_redact_target_is_redact_text_of_the_whole_target(path: str, query: str) -> None:
    whole = path + ("?" + query if query else "")
    assert redact_target(path, query) == redact_text(whole)
