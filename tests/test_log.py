"""Secrets never reach a log line (CONTRACT §4: token= in query strings)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from server.log import JsonFormatter, RedactingFilter, event, redact


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
