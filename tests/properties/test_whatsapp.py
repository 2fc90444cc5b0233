"""WhatsApp signatures and payloads (server/core/whatsapp.py): signing and verifying agree for
any body and any secret (a non-UTF-8 app secret from the environment raised UnicodeEncodeError
on every webhook), any header is a verdict, any JSON payload parses to events."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from server.core.whatsapp import (
    InboundMessage,
    Reason,
    StatusUpdate,
    parse_webhook,
    phone_number_ids,
    safe_challenge,
    sign,
    token_digest,
    token_matches,
    verify_signature,
)
from tests.properties.conftest import ANY_CHAR
from tests.properties.test_frames import JSON

# Secrets as the environment and the SDK give them: any text, and bytes that were not UTF-8
# (os.environ decodes those with surrogateescape).
SECRET = st.text(ANY_CHAR, min_size=1, max_size=40) | st.binary(min_size=1, max_size=40).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)


@given(st.binary(max_size=300), SECRET, st.lists(SECRET, max_size=2))
def test_a_body_signed_with_any_secret_verifies_with_it_among_others(
    body: bytes, secret: str, others: list[str]
) -> None:
    verdict = verify_signature(body, sign(body, secret), [*others, secret])
    assert verdict.ok and verdict.reason is Reason.OK


def test_a_non_utf8_secret_signs_with_its_original_bytes() -> None:
    import hashlib
    import hmac

    secret = b"\xffmeta-secret".decode("utf-8", "surrogateescape")
    expected = "sha256=" + hmac.new(b"\xffmeta-secret", b"{}", hashlib.sha256).hexdigest()
    assert sign(b"{}", secret) == expected
    assert verify_signature(b"{}", expected, [secret]).ok


@given(st.binary(max_size=200), SECRET, st.binary(min_size=1, max_size=20))
def test_a_changed_body_does_not_verify(body: bytes, secret: str, extra: bytes) -> None:
    assert not verify_signature(body + extra, sign(body, secret), [secret]).ok


@given(st.binary(max_size=100), st.text(ANY_CHAR, max_size=120) | st.none(), st.lists(SECRET, max_size=2))
def test_any_header_is_a_verdict(body: bytes, header: str | None, secrets: list[str]) -> None:
    verdict = verify_signature(body, header, secrets)
    assert verdict.ok in (True, False) and isinstance(verdict.reason, Reason)


@given(JSON)
def test_any_json_payload_parses_to_events(payload: object) -> None:
    events = parse_webhook(payload)
    assert all(isinstance(e, InboundMessage | StatusUpdate) for e in events)
    assert isinstance(phone_number_ids(payload), list)
    json.dumps([e.to_dict() for e in events])  # they travel the store queue as JSON


@given(st.text(ANY_CHAR, max_size=300) | st.none())
def test_a_challenge_is_echoed_only_when_safe(challenge: str | None) -> None:
    echoed = safe_challenge(challenge)
    if echoed is not None:
        assert echoed == challenge and echoed.isascii() and "\n" not in echoed and len(echoed) <= 256


@given(SECRET, st.lists(SECRET, max_size=3))
def test_verify_tokens_compare_and_digest_without_raising(token: str, candidates: list[str]) -> None:
    assert token_matches(token, [*candidates, token])
    assert len(token_digest(token)) == 64
