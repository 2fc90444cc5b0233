"""Token signing and verification: forged, expired and wrong-channel tokens are refused by arithmetic."""

from __future__ import annotations

import hashlib
import json

import pytest
from itsdangerous import Signer
from itsdangerous.encoding import base64_decode

from server.core.tokens import (
    LEEWAY_SECONDS,
    MAX_METADATA_BYTES,
    MAX_TOKEN_LENGTH,
    PREFIX,
    Channel,
    Claims,
    JtiSource,
    TokenCodec,
    parse_metadata,
    parse_scope,
)
from server.errors import BadRequest, TokenExpired, TokenInvalid, TokenWrongChannel

NOW = 1_700_000_000.0


def claims(channel: Channel = Channel.WEBRTC, **extra: object) -> Claims:
    values: dict[str, object] = {
        "jti": JtiSource()(),
        "org_id": "acme",
        "agents": ("florencia",),
        "channel": channel,
        "issued_at": NOW,
        "expires_at": NOW + 60,
    }
    values.update(extra)
    return Claims(**values)  # type: ignore[arg-type]


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(["secret-one"])


@pytest.mark.parametrize("channel", list(Channel))
def test_round_trip_keeps_every_claim(codec: TokenCodec, channel: Channel) -> None:
    original = claims(channel, metadata={"user": "u1", "n": 3}, scope="observe", call_id="c-1")
    token = codec.encode(original)
    assert token.startswith(PREFIX[channel])
    assert codec.decode(token, channel, NOW + 1) == original


@pytest.mark.parametrize("channel", list(Channel))
def test_signatures_are_exactly_itsdangerous_signer_signatures(channel: Channel) -> None:
    """The codec signs with a pre-keyed HMAC for speed; the bytes must be what an itsdangerous
    Signer with the same secrets and salt writes (and so what ``unsign`` accepts)."""
    secrets = ["older-secret", "newest-secret"]
    token = TokenCodec(secrets).encode(claims(channel, metadata={"user": "ü"}))
    body, _, _ = token[len(PREFIX[channel]) :].partition(".")
    signer = Signer(secrets, salt=f"voice-server.token.{channel.value}", digest_method=hashlib.sha256)
    assert token[len(PREFIX[channel]) :] == signer.sign(body).decode()


@pytest.mark.parametrize(
    "extra",
    [{}, {"metadata": {"a": [1, 'ü"\n']}, "scope": "observe", "call_id": "c-1"}, {"org_id": 'q"\\ü'}],
)
def test_the_payload_is_the_compact_json_of_the_claims(codec: TokenCodec, extra: dict[str, object]) -> None:
    made = claims(agents=("a", 'b"\u2028'), issued_at=NOW + 0.1234, expires_at=NOW + 60.5, **extra)
    body = codec.encode(made)[len(PREFIX[made.channel]) :].partition(".")[0]
    expected = {"j": made.jti, "o": made.org_id, "a": list(made.agents), "i": round(NOW + 0.1234, 3)}
    expected["e"] = NOW + 60.5
    expected |= {k: v for k, v in (("m", made.metadata), ("s", made.scope), ("c", made.call_id)) if v}
    payload = base64_decode(body)
    assert json.loads(payload) == expected
    assert b", " not in payload and b'": ' not in payload  # compact separators


def test_tokens_are_url_safe(codec: TokenCodec) -> None:
    """The chat client puts the token in a query string unencoded (CONTRACT §1)."""
    token = codec.encode(claims(metadata={"text": "ä ö / + = ? & #" * 20}))
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    assert set(token) <= allowed


def test_a_flipped_signature_character_is_invalid(codec: TokenCodec) -> None:
    token = codec.encode(claims())
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(TokenInvalid):
        codec.decode(forged, Channel.WEBRTC, NOW)


@pytest.mark.parametrize("last", list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
def test_every_other_last_signature_character_is_invalid(codec: TokenCodec, last: str) -> None:
    """Issue 15 (low): one canonical spelling only; the unused low bits of the last base64
    character used to let 3 of 64 replacements verify (and the test above fail 1 run in ~20)."""
    token = codec.encode(claims())
    if last == token[-1]:
        return
    with pytest.raises(TokenInvalid):
        codec.decode(token[:-1] + last, Channel.WEBRTC, NOW)


@pytest.mark.parametrize("suffix", ["=", "==", "\u00e9"])
def test_padding_and_non_ascii_spellings_are_invalid(codec: TokenCodec, suffix: str) -> None:
    token = codec.encode(claims())
    with pytest.raises(TokenInvalid):
        codec.decode(token + suffix.encode().decode("unicode_escape"), Channel.WEBRTC, NOW)


def test_a_payload_edited_to_another_org_is_invalid(codec: TokenCodec) -> None:
    token = codec.encode(claims())
    body, _, signature = token[len("wrtc_") :].rpartition(".")
    other = codec.encode(claims(org_id="evil"))
    other_body = other[len("wrtc_") :].rpartition(".")[0]
    with pytest.raises(TokenInvalid):
        codec.decode("wrtc_" + other_body + "." + signature, Channel.WEBRTC, NOW)
    assert body != other_body


def test_a_token_signed_with_another_secret_is_invalid(codec: TokenCodec) -> None:
    stranger = TokenCodec(["someone-else"]).encode(claims())
    with pytest.raises(TokenInvalid):
        codec.decode(stranger, Channel.WEBRTC, NOW)


@pytest.mark.parametrize(
    "garbage", ["", "wrtc_", "wrtc_abc", "xyz_abc.def", "cht_" + "a" * 9000, "wrtc_..", "wrtc_e30.AAAA"]
)
def test_malformed_tokens_are_invalid(codec: TokenCodec, garbage: str) -> None:
    with pytest.raises(TokenInvalid):
        codec.decode(garbage, Channel.WEBRTC, NOW)


def test_rotation_accepts_old_and_new_and_signs_with_newest() -> None:
    old = TokenCodec(["old"])
    rotated = TokenCodec(["old", "new"])
    new_only = TokenCodec(["new"])
    from_old = old.encode(claims())
    from_rotated = rotated.encode(claims())
    assert rotated.decode(from_old, Channel.WEBRTC, NOW)
    assert new_only.decode(from_rotated, Channel.WEBRTC, NOW)
    with pytest.raises(TokenInvalid):
        new_only.decode(from_old, Channel.WEBRTC, NOW)


def test_expiry_allows_one_second_of_leeway_and_no_more(codec: TokenCodec) -> None:
    token = codec.encode(claims())
    assert codec.decode(token, Channel.WEBRTC, NOW + 60 + LEEWAY_SECONDS)
    with pytest.raises(TokenExpired):
        codec.decode(token, Channel.WEBRTC, NOW + 60 + LEEWAY_SECONDS + 0.01)


def test_a_chat_token_cannot_open_a_webrtc_session(codec: TokenCodec) -> None:
    token = codec.encode(claims(Channel.CHAT))
    with pytest.raises(TokenWrongChannel):
        codec.decode(token, Channel.WEBRTC, NOW)


def test_relabelling_the_prefix_breaks_the_signature(codec: TokenCodec) -> None:
    """Salts differ per channel: ``cht_`` → ``wrtc_`` does not turn a chat token into a WebRTC one."""
    token = codec.encode(claims(Channel.CHAT))
    with pytest.raises(TokenInvalid):
        codec.decode("wrtc_" + token[len("cht_") :], Channel.WEBRTC, NOW)


def test_expired_is_reported_before_wrong_channel(codec: TokenCodec) -> None:
    token = codec.encode(claims(Channel.CHAT))
    with pytest.raises(TokenExpired):
        codec.decode(token, Channel.WEBRTC, NOW + 3600)


def test_codec_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        TokenCodec([])
    with pytest.raises(ValueError):
        TokenCodec([""])


def test_metadata_must_be_a_small_json_object() -> None:
    assert parse_metadata(None) == {}
    assert parse_metadata("") == {}
    assert parse_metadata('{"a": 1}') == {"a": 1}
    for bad in ("[1]", '"x"', "1", "{", "null"):
        with pytest.raises(BadRequest):
            parse_metadata(bad)
    big = json.dumps({"k": "x" * MAX_METADATA_BYTES})
    with pytest.raises(BadRequest, match="larger"):
        parse_metadata(big)


def test_scope_is_one_of_three() -> None:
    assert parse_scope(None) is None
    assert parse_scope("supervise") == "supervise"
    with pytest.raises(BadRequest):
        parse_scope("admin")


def test_jtis_are_unique_and_url_safe() -> None:
    new_jti = JtiSource()
    ids = {new_jti() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 for i in ids)


def test_two_kilobytes_of_any_metadata_make_a_usable_token(codec: TokenCodec) -> None:
    """Metadata within its 2 KB bound always fits the token bound: emoji were 12 characters each
    as JSON escapes, so 509 of them (2,044 bytes) made a token of ~8,400 characters that no
    session accepts."""
    emoji = parse_metadata(json.dumps({"x": "\U0001f600" * 509}, ensure_ascii=False))
    token = codec.encode(claims(metadata=emoji))
    assert len(token) <= MAX_TOKEN_LENGTH
    assert codec.decode(token, Channel.WEBRTC, NOW).metadata == emoji


def test_a_token_over_the_length_bound_is_refused_at_mint(codec: TokenCodec) -> None:
    many = tuple(f"agent-{i:04d}-{'x' * 100}" for i in range(80))
    with pytest.raises(BadRequest, match="longer than"):
        codec.encode(claims(agents=many))
