"""API keys: generation, the at-rest digest, and the shape of a stored key.

Keys are never stored in clear: the store holds ``sha256(key)`` and looks keys up by that
digest. A 256-bit random key needs no slow KDF (there is nothing to brute-force), and a
plain digest keeps the lookup one store read. Comparison of secrets happens via the
digest lookup; where a digest is compared directly, ``hmac.compare_digest`` is used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from server.core.text import utf8


class KeyKind(StrEnum):
    SECRET = "secret"  # noqa: S105 - a kind name, not a password
    PUBLISHABLE = "publishable"


PREFIX = {KeyKind.SECRET: "sk_live_", KeyKind.PUBLISHABLE: "pk_publishable_"}
MAX_KEY_LENGTH = 256


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: everything but the secret itself."""

    key_id: str
    org_id: str
    kind: KeyKind
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None
    label: str = ""

    def active_at(self, now: float) -> bool:
        """Usable at ``now``: never revoked, or revoked for a later time (a rotation's grace)."""
        return self.revoked_at is None or now < self.revoked_at


def new_secret(kind: KeyKind) -> str:
    return PREFIX[kind] + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def digest(secret: str) -> str:
    return hashlib.sha256(utf8(secret)).hexdigest()


def kind_of(secret: str) -> KeyKind:
    return KeyKind.PUBLISHABLE if secret.startswith(PREFIX[KeyKind.PUBLISHABLE]) else KeyKind.SECRET


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(utf8(a), utf8(b))


def parse_bearer(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <key>`` header; ``""`` when malformed."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > MAX_KEY_LENGTH or " " in value:
        return ""
    return value


def valid_org_id(org_id: str) -> bool:
    return 0 < len(org_id) <= 64 and all(c.isalnum() or c in "-_." for c in org_id) and org_id.isascii()
