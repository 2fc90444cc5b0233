"""server.core.whatsapp: signatures over raw bytes, verify tokens, payload parsing, reply helpers."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from server.core.whatsapp import (
    WINDOW_SECONDS,
    InboundMessage,
    Reason,
    StatusUpdate,
    channel_secrets,
    describe,
    event_from_dict,
    parse_webhook,
    phone_number_ids,
    safe_challenge,
    sample_payload,
    session_end_reason,
    sign,
    split_text,
    text_message,
    token_matches,
    verify_signature,
)

SECRET = "app-secret-1"
BODY = json.dumps(sample_payload("111", "15550001", "hola", "wamid.1")).encode()


def meta_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_matches_hmac_sha256_of_the_raw_bytes() -> None:
    assert sign(BODY, SECRET) == meta_signature(BODY, SECRET)


def test_valid_signature_verifies() -> None:
    verdict = verify_signature(BODY, meta_signature(BODY, SECRET), [SECRET])
    assert verdict.ok and verdict.reason is Reason.OK


def test_tampered_body_does_not_verify() -> None:
    header = meta_signature(BODY, SECRET)
    tampered = BODY.replace(b"hola", b"hole")
    verdict = verify_signature(tampered, header, [SECRET])
    assert not verdict.ok and verdict.reason is Reason.NO_MATCH


def test_wrong_secret_does_not_verify() -> None:
    verdict = verify_signature(BODY, meta_signature(BODY, "another"), [SECRET])
    assert verdict.reason is Reason.NO_MATCH


def test_missing_header_is_its_own_reason() -> None:
    assert verify_signature(BODY, None, [SECRET]).reason is Reason.MISSING_HEADER
    assert verify_signature(BODY, "  ", [SECRET]).reason is Reason.MISSING_HEADER


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(), "sha1="),
        (hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest(), "no 'sha256=' prefix"),
        ("sha256=" + "a" * 63, "not hex"),
        ("sha256=" + "zz" * 32, "not hex"),
        ("sha256=" + "ab" * 16, "expected 64"),
    ],
    ids=["sha1-prefix", "no-prefix", "odd-hex", "non-hex", "short"],
)
def test_malformed_headers_are_bad_format_and_never_echo_the_value(header: str, why: str) -> None:
    verdict = verify_signature(BODY, header, [SECRET])
    assert not verdict.ok and verdict.reason is Reason.BAD_FORMAT
    assert why in verdict.detail
    digest = header.partition("=")[2] or header
    assert digest not in verdict.detail and SECRET not in verdict.detail


def test_uppercase_hex_digest_is_accepted() -> None:
    header = "sha256=" + meta_signature(BODY, SECRET)[7:].upper()
    assert verify_signature(BODY, header, [SECRET]).ok


def test_escaped_unicode_and_at_sign_are_verified_over_the_exact_bytes() -> None:
    """Meta escapes non-ASCII (``\\u00e9``); re-serialising the JSON would change the bytes."""
    raw = b'{"entry":[{"changes":[{"value":{"messages":[{"text":{"body":"caf\\u00e9 @ 10"}}]}}]}]}'
    header = meta_signature(raw, SECRET)
    assert verify_signature(raw, header, [SECRET]).ok
    reserialised = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    assert "café @ 10" in reserialised.decode()
    assert not verify_signature(reserialised, header, [SECRET]).ok
    compact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert compact == raw  # same ASCII escapes, same bytes: still fine
    assert verify_signature(compact, header, [SECRET]).ok


def test_rotation_accepts_old_and_new_secret() -> None:
    secrets = ["old-secret", "new-secret"]
    assert verify_signature(BODY, meta_signature(BODY, "old-secret"), secrets).ok
    assert verify_signature(BODY, meta_signature(BODY, "new-secret"), secrets).ok
    assert not verify_signature(BODY, meta_signature(BODY, "retired"), secrets).ok


def test_no_secret_is_its_own_verdict() -> None:
    assert verify_signature(BODY, meta_signature(BODY, SECRET), []).reason is Reason.NO_SECRET


def test_channel_secrets_accept_a_string_or_a_rotation_list() -> None:
    assert channel_secrets({"appSecret": "s"}) == ("s",)
    assert channel_secrets({"appSecret": ["a", "", 3, "b"]}) == ("a", "b")
    assert channel_secrets({"appSecret": ""}) == ()
    assert channel_secrets(None) == ()


def test_verify_token_matches_any_candidate() -> None:
    assert token_matches("t2", ["t1", "t2"])
    assert not token_matches("t3", ["t1", "t2", ""])
    assert not token_matches("", [""])


@pytest.mark.parametrize("challenge", ["1158201444", "abc-DEF_1.2"])
def test_safe_challenges_are_echoed(challenge: str) -> None:
    assert safe_challenge(challenge) == challenge


@pytest.mark.parametrize("challenge", [None, "", "<script>", "a b", "x" * 257, "é"])
def test_unsafe_challenges_are_refused(challenge: str | None) -> None:
    assert safe_challenge(challenge) is None


def test_text_message_is_parsed_with_the_contact_name() -> None:
    [msg] = parse_webhook(json.loads(BODY))
    assert isinstance(msg, InboundMessage)
    assert (msg.phone_number_id, msg.message_id, msg.contact, msg.text) == (
        "111",
        "wamid.1",
        "15550001",
        "hola",
    )
    assert msg.contact_name == "Test User" and msg.type == "text"


def test_statuses_are_parsed() -> None:
    payload = {
        "entry": [
            {
                "changes": [
                    {
                        "value": {
                            "metadata": {"phone_number_id": "111"},
                            "statuses": [
                                {
                                    "id": "wamid.9",
                                    "status": "read",
                                    "recipient_id": "1555",
                                    "timestamp": "17",
                                },
                                {"status": "sent"},
                            ],
                        }
                    }
                ]
            }
        ]
    }
    [status] = parse_webhook(payload)
    assert status == StatusUpdate("111", "wamid.9", "read", "1555", 17)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "image", "image": {"id": "m1", "caption": "look"}}, "[image] look"),
        ({"type": "audio", "audio": {"id": "m1", "voice": True}}, "[audio (voice note)]"),
        ({"type": "document", "document": {"filename": "a.pdf"}}, "[document: a.pdf]"),
        (
            {"type": "location", "location": {"latitude": 1.5, "longitude": 2, "name": "Cafe"}},
            "[location: Cafe (1.5, 2)]",
        ),
        ({"type": "interactive", "interactive": {"button_reply": {"id": "b1", "title": "Yes"}}}, "Yes"),
        ({"type": "interactive", "interactive": {"list_reply": {"id": "l1", "title": "Row"}}}, "Row"),
        ({"type": "button", "button": {"payload": "P", "text": "Stop"}}, "Stop"),
        ({"type": "reaction", "reaction": {"message_id": "x", "emoji": "👍"}}, "[reaction 👍]"),
        ({"type": "contacts", "contacts": [{"name": {"formatted_name": "Ana"}}]}, "[contacts: Ana]"),
        ({"type": "sticker", "sticker": "not-an-object"}, "[sticker]"),
        ({"type": "hologram"}, "[hologram message]"),
    ],
)
def test_non_text_messages_get_a_description(message: dict[str, object], text: str) -> None:
    assert describe(message) == text


def test_unknown_shapes_are_skipped_not_errors() -> None:
    for payload in (None, [], {"entry": "x"}, {"entry": [{"changes": [{"value": {"messages": [{}]}}]}]}, 42):
        assert parse_webhook(payload) == []
        assert phone_number_ids(payload) == []


def test_phone_number_ids_are_listed_once_each_in_order() -> None:
    a = sample_payload("222", "1", "x", "w1")
    b = sample_payload("111", "1", "y", "w2")
    payload = {"entry": [*a["entry"], *b["entry"], *a["entry"]]}
    assert phone_number_ids(payload) == ["222", "111"]


def test_events_round_trip_through_dicts() -> None:
    msg = parse_webhook(json.loads(BODY))[0]
    status = StatusUpdate("1", "w", "failed", "2", 3, ({"code": 131047},))
    assert event_from_dict(json.loads(json.dumps(msg.to_dict()))) == msg
    assert event_from_dict(json.loads(json.dumps(status.to_dict()))) == status


def test_split_text_keeps_short_replies_whole_and_splits_long_ones_at_spaces() -> None:
    assert split_text("hi") == ["hi"]
    words = " ".join(["word"] * 2000)
    parts = split_text(words, 100)
    assert all(len(p) <= 100 for p in parts) and " ".join(parts) == words
    assert split_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_text_message_is_metas_shape() -> None:
    assert text_message("1555", "hi") == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "1555",
        "type": "text",
        "text": {"preview_url": False, "body": "hi"},
    }


def test_session_ends_after_the_24h_window_or_idle_timeout() -> None:
    assert session_end_reason(100.0, 0.0, 50.0, idle=3600) is None
    assert session_end_reason(3650.0, 3000.0, 40.0, idle=3600) == "idle_timeout"
    assert session_end_reason(WINDOW_SECONDS + 1.0, 0.0, WINDOW_SECONDS, idle=3600) == "window_closed"
