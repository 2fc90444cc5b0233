"""Tokens (server/core/tokens.py): any text or bytes is refused with a token error and nothing
else; tampering with any character of a real token is refused; and the pre-keyed HMAC the codec
signs with gives the same signature as itsdangerous' Signer (the differential property)."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import Signer

from server.core.tokens import PREFIX, Channel, Claims, TokenCodec, parse_metadata, parse_scope
from server.errors import BadRequest, TokenError
from tests.properties.conftest import ANY_CHAR

SECRET = "property-secret-0123456789abcdef0123"
CODEC = TokenCodec([SECRET])
NOW = 1_000_000.0
CHANNELS = st.sampled_from(list(Channel))
TEXT = st.text(ANY_CHAR, max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))


def claims(channel: Channel, metadata: dict[str, object] | None = None) -> Claims:
    return Claims("jti-1", "acme", ("bot",), channel, NOW, NOW + 60, metadata or {})


@given(TEXT, CHANNELS, CHANNELS)
def test_any_text_is_refused_with_a_token_error(
    text: str, prefix_channel: Channel, expected: Channel
) -> None:
    for candidate in (text, PREFIX[prefix_channel] + text):
        try:
            CODEC.decode(candidate, expected, NOW)
        except TokenError:
            continue
        raise AssertionError(f"accepted {candidate!r}")


@given(st.binary(max_size=200), CHANNELS)
def test_any_bytes_decoded_as_a_socket_or_query_would_are_refused(raw: bytes, channel: Channel) -> None:
    for text in (
        raw.decode("utf-8", "replace"),
        raw.decode("latin-1"),
        raw.decode("utf-8", "surrogateescape"),
    ):
        try:
            CODEC.decode(PREFIX[channel] + text, channel, NOW)
        except TokenError:
            continue
        raise AssertionError("accepted")


@given(CHANNELS, st.data())
def test_changing_any_one_character_of_a_token_is_refused(channel: Channel, data: st.DataObject) -> None:
    token = CODEC.encode(claims(channel))
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters().filter(lambda c: c != token[index]))
    tampered = token[:index] + replacement + token[index + 1 :]
    try:
        CODEC.decode(tampered, channel, NOW)
    except TokenError:
        return
    raise AssertionError(f"accepted a token changed at {index}")


# Sealed metadata came through strict JSON, which refuses lone surrogates: plain text here.
@given(CHANNELS, st.dictionaries(st.text(max_size=8), st.text(max_size=20) | st.integers(), max_size=4))
def test_the_pre_keyed_hmac_signs_exactly_as_itsdangerous(
    channel: Channel, metadata: dict[str, object]
) -> None:
    token = CODEC.encode(claims(channel, metadata))
    signed = token[len(PREFIX[channel]) :]
    body = signed.rsplit(".", 1)[0]
    reference = Signer([SECRET], salt=f"voice-server.token.{channel.value}", digest_method=hashlib.sha256)
    assert reference.sign(body).decode() == signed
    assert CODEC.decode(token, channel, NOW).metadata == metadata


@given(TEXT)
def test_metadata_parses_to_an_object_or_is_a_bad_request(raw: str) -> None:
    """Lone surrogates (``"\\ud800"``) raised UnicodeEncodeError in the size check."""
    with contextlib.suppress(BadRequest):
        assert isinstance(parse_metadata(raw), dict)


def test_metadata_with_a_lone_surrogate_is_a_bad_request() -> None:
    for raw in ("\ud800", '{"a":"\ud800"}', "\udcff" * 3000):
        try:
            parse_metadata(raw)
        except BadRequest:
            continue
        raise AssertionError(raw)


@given(TEXT)
def test_scope_is_one_of_the_scopes_or_a_bad_request(raw: str) -> None:
    with contextlib.suppress(BadRequest):
        assert parse_scope(raw) in (None, "observe", "participate", "supervise")
