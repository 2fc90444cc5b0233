"""Secrets never reach a log line (CONTRACT §4: token= in query strings)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from server.core.redaction import redact_text as redact
from server.log import JsonFormatter, RedactingFilter, event


@pytest.mark.parametrize(
    "line",
    [
        "GET /chat/ws?token=cht_abc.def.ghi&thread=t1",
        "GET /chat/ws?thread=t1&token=cht_abc.def",
        '{"event": "connect", "api_key": "sk_live_secret"}',
        "Authorization: Bearer sk_live_secret",
        "authorization=Bearer sk_live_secret",
        "hub.verify_token=meta-verify-secret&hub.challenge=1",
        '{"accessToken": "EAAG-secret", "appSecret": "app-secret"}',
        "minted wrtc_eyJhbGciOi.payload.sig for agent",
    ],
)
def test_redact_removes_the_secret(line: str) -> None:
    cleaned = redact(line)
    for secret in (
        "abc",
        "sk_live_secret",
        "meta-verify-secret",
        "EAAG-secret",
        "app-secret",
        "eyJhbGciOi",
        "ghi",
    ):
        if secret in line:
            assert secret not in cleaned, cleaned


def test_the_filter_redacts_messages_args_and_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("%s %s", "GET", "/chat/ws?token=cht_SECRET1")
        event(logger, "http", path="/chat/ws?token=cht_SECRET2", api_key="sk_live_SECRET3")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "SECRET1" not in output and "SECRET2" not in output and "SECRET3" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[1]["path"].startswith("/chat/ws?token=")


def _capture(*records: tuple[str, tuple[object, ...]], **fields: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction.args")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for message, args in records:
            logger.debug(message, *args)
        if fields:
            event(logger, "event", **fields)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_websockets_handshake_headers_are_shown_by_allow_list() -> None:
    output = _capture(
        ("< %s: %s", ("Cookie", "session=SECRET1")),
        ("< %s: %s", ("x-api-key", "SECRET2")),
        ("> %s: %s", ("Set-Cookie", "id=SECRET3")),
        ("< %s: %s", ("User-Agent", "websockets/17")),
    )
    assert "SECRET" not in output
    assert "< Cookie: [redacted]" in output and "< User-Agent: websockets/17" in output


def test_websockets_frames_are_redacted_before_they_are_elided() -> None:
    from websockets.frames import Frame, Opcode

    payload = {"event": "channel.add", "agent_id": "a" * 100, "verifyToken": "SECRET1TAIL"}
    frame = Frame(Opcode.TEXT, json.dumps(payload).encode())
    assert "TAIL" in str(frame)  # what websockets alone would log: the secret's tail
    output = _capture(("< %s", (frame,)), ("> %s", (Frame(Opcode.CLOSE, b"\x03\xe8"),)))
    assert "SECRET1" not in output and "TAIL" not in output
    lines = [json.loads(line)["msg"] for line in output.splitlines()]
    assert lines[0].startswith('< TEXT {"event":"channel.add"') and lines[1] == "> CLOSE 1000 (OK) [2 bytes]"


def test_dict_arguments_and_nested_fields_are_redacted_by_name() -> None:
    output = _capture(
        ("config %s", ({"llm": {"apiKey": "SECRET1"}, "model": "m"},)),
        ("%(who)s sent %(accessToken)s", ({"who": "agent", "accessToken": "SECRET2"},)),
        channel={"type": "whatsapp", "app_secret": "SECRET3", "nested": [{"password": "SECRET4"}]},
        headers={"Host": "h", "Cookie": "SECRET5"},
    )
    assert "SECRET" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert "'model': 'm'" in lines[0]["msg"] and lines[1]["msg"] == "agent sent [redacted]"
    assert lines[2]["channel"]["type"] == "whatsapp" and lines[2]["headers"]["Host"] == "h"
