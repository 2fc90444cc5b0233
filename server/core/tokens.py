"""Session tokens: claims, signing and verification (CONTRACT §2).

A token is ``<prefix><base64url(JSON claims)>.<base64url(HMAC-SHA256)>``, signed by an
itsdangerous ``Signer``. The prefix names the channel
(``wrtc_``, ``cht_``, ``stm_``) and picks the salt, so a signature made for one channel never
verifies for another. The secret is a list (newest last): tokens are signed with the newest
and accepted with any, which is how ``VOICE_TOKEN_SECRET`` rotates without downtime.

Verification here never touches the store: a forged, malformed, expired or wrong-channel
token is refused by arithmetic alone. Single use (the ``jti``) is the store's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from itsdangerous import BadData, Signer
from itsdangerous.encoding import base64_decode

from server.core import strictjson
from server.core.text import utf8
from server.errors import BadRequest, TokenExpired, TokenInvalid, TokenWrongChannel


class Channel(StrEnum):
    WEBRTC = "webrtc"
    CHAT = "chat"
    STREAM = "stream"


PREFIX: Mapping[Channel, str] = {Channel.WEBRTC: "wrtc_", Channel.CHAT: "cht_", Channel.STREAM: "stm_"}
SCOPES = frozenset({"observe", "participate", "supervise"})
MAX_TOKEN_LENGTH = 8192
MAX_METADATA_BYTES = 2048
MAX_SIGNATURE_OVERHEAD = max(map(len, PREFIX.values())) + 1 + 43  # prefix, ".", base64url SHA-256
LEEWAY_SECONDS = 1.0
MAX_CACHED_SCOPES = 4096
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per call
# Sealed metadata as UTF-8, not \u escapes: 2 KB of emoji would otherwise grow 3x in the JSON
# and make a token over MAX_TOKEN_LENGTH (strict JSON already refused lone surrogates).
_COMPACT_UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class Claims(NamedTuple):
    """What a token says. A NamedTuple: immutable, and built on every mint and consume at about
    half the cost of a frozen dataclass."""

    jti: str
    org_id: str
    agents: tuple[str, ...]
    channel: Channel
    issued_at: float
    expires_at: float
    metadata: Mapping[str, Any] = MappingProxyType({})
    scope: str | None = None
    call_id: str | None = None

    @property
    def agent_id(self) -> str:
        return self.agents[0]


JTI_BYTES = 16


class JtiSource:
    """Token ids: 128 random bits from the OS CSPRNG, read 4 KiB at a time, so one
    ``getrandom`` call serves 256 tokens (a call per token showed up in the mint profile)."""

    def __init__(self) -> None:
        self._entropy = b""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset + JTI_BYTES > len(self._entropy):
            self._entropy, self._offset = os.urandom(4096), 0
        raw = self._entropy[self._offset : self._offset + JTI_BYTES]
        self._offset += JTI_BYTES
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """Sealed metadata from the query string: a JSON object of at most 2 KB (CONTRACT §1)."""
    if raw is None or raw == "":
        return {}
    if len(utf8(raw)) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = strictjson.loads(raw)
    except ValueError:
        raise BadRequest("metadata is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("metadata must be a JSON object")
    return value


def parse_scope(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(sorted(SCOPES))}")
    return raw


class TokenCodec:
    """Signs and verifies tokens; pure and clock-free (the caller passes ``now``)."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        if not secret_keys or not all(secret_keys):
            raise ValueError("at least one non-empty token secret is required")
        # A bare Signer over compact JSON: the Serializer's zlib attempt and wrapping cost more
        # than the signature itself on the mint path, and buy nothing for ~100-byte payloads.
        self._signers = {
            channel: Signer(
                list(secret_keys), salt=f"voice-server.token.{channel.value}", digest_method=hashlib.sha256
            )
            for channel in Channel
        }
        # Signing is on every mint: the Signer's own ``sign`` derives the key and sets up the
        # HMAC on each call (~4 µs); a keyed HMAC made once with the same derived key and copied
        # per token gives the same bytes for ~1 µs (tests/core/test_tokens.py checks they agree).
        self._macs = {
            channel: hmac.new(signer.derive_key(), digestmod=hashlib.sha256)
            for channel, signer in self._signers.items()
        }
        self._who: dict[tuple[str, tuple[str, ...]], str] = {}

    def encode(self, claims: Claims) -> str:
        """The token for ``claims``; BadRequest if it would be longer than ``decode`` accepts."""
        body = base64.urlsafe_b64encode(self._payload(claims).encode()).rstrip(b"=")
        if len(body) > MAX_TOKEN_LENGTH - MAX_SIGNATURE_OVERHEAD:
            raise BadRequest(
                f"the token would be longer than {MAX_TOKEN_LENGTH} characters; seal less metadata "
                "or name fewer agents"
            )
        mac = self._macs[claims.channel].copy()
        mac.update(body)
        signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")  # itsdangerous's base64_encode
        return PREFIX[claims.channel] + (body + b"." + signature).decode("ascii")

    def _payload(self, claims: Claims) -> str:
        """The compact JSON of the claims: ``{"j","o","a","i","e"[,"m"][,"s"][,"c"]}``. The org and
        agents part is encoded once per (org, agents) and reused; the token id is base64url and
        the times are numbers with millisecond precision, so neither needs escaping."""
        who = self._who.get((claims.org_id, claims.agents))
        if who is None:
            if len(self._who) >= MAX_CACHED_SCOPES:
                self._who.clear()
            who = self._who[(claims.org_id, claims.agents)] = _COMPACT.encode(
                {"o": claims.org_id, "a": list(claims.agents)}
            )[1:-1]
        optional: dict[str, Any] = {}
        if claims.metadata:
            optional["m"] = claims.metadata
        if claims.scope:
            optional["s"] = claims.scope
        if claims.call_id:
            optional["c"] = claims.call_id
        tail = "," + _COMPACT_UTF8.encode(optional)[1:-1] if optional else ""
        return f'{{"j":"{claims.jti}",{who},"i":{claims.issued_at:.3f},"e":{claims.expires_at:.3f}{tail}}}'

    def decode(self, token: str, expected: Channel, now: float) -> Claims:
        """Verify ``token`` for ``expected``; raise the one error that describes it."""
        channel = _channel_of(token)
        if channel is None or len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("token is malformed")
        signed = token[len(PREFIX[channel]) :]
        try:
            body = self._signers[channel].unsign(signed)
            if not all(_canonical(part) for part in signed.split(".")):
                raise ValueError("not the one encoding we write")
            payload = json.loads(base64_decode(body))
        except (BadData, ValueError):
            raise TokenInvalid("token signature is invalid") from None
        claims = _claims(payload, channel)
        if now > claims.expires_at + LEEWAY_SECONDS:
            raise TokenExpired("token has expired")
        if channel is not expected:
            raise TokenWrongChannel(f"a {channel.value} token cannot open a {expected.value} session")
        return claims


def _canonical(part: str) -> bool:
    """Exactly the unpadded base64url we write (issue 15): base64 decoders ignore the unused low
    bits of the last character and accept padding, so one token had several spellings that
    all verified (and a flipped last character sometimes still did)."""
    if not part.isascii() or "=" in part:
        return False
    return base64.urlsafe_b64encode(base64_decode(part)).rstrip(b"=") == part.encode("ascii")


def _channel_of(token: str) -> Channel | None:
    for channel, prefix in PREFIX.items():
        if token.startswith(prefix):
            return channel
    return None


def _claims(payload: object, channel: Channel) -> Claims:
    # A correctly signed payload was written by us; still refuse anything of the wrong shape
    # (an old format, or a secret shared with another program).
    try:
        if not isinstance(payload, dict):
            raise TypeError("payload is not an object")
        agents = tuple(str(a) for a in payload["a"])
        metadata = payload.get("m") or {}
        if not agents or not isinstance(metadata, dict):
            raise TypeError("payload has no agent or a bad metadata")
        return Claims(
            jti=str(payload["j"]),
            org_id=str(payload["o"]),
            agents=agents,
            channel=channel,
            issued_at=float(payload["i"]),
            expires_at=float(payload["e"]),
            metadata=metadata,
            scope=payload.get("s"),
            call_id=payload.get("c"),
        )
    except (KeyError, TypeError, ValueError):
        raise TokenInvalid("token payload is malformed") from None
