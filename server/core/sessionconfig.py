"""What a browser may ask of a WebRTC session (CONTRACT §3), decided without any I/O.

* The offer body ``{sdp, type: "offer", token, config?, metadata?}`` is parsed into an
  :class:`OfferRequest` or refused with :class:`~server.errors.BadRequest`; the refusal names the
  field but never echoes what was sent.
* Browser ``config`` may only set :data:`BROWSER_CONFIG_KEYS`; the rest (``prompt``, ``llm``,
  ``tools``...) is dropped, and the dropped key names are returned so the caller can log them.
* ``call.started.metadata`` is the browser's metadata overwritten by the token's sealed
  metadata: a sealed key always wins (CONTRACT §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.core import strictjson
from server.core.tokens import MAX_TOKEN_LENGTH
from server.errors import BadRequest

BROWSER_CONFIG_KEYS = frozenset({"voice", "language", "stt", "tts", "greeting", "flash"})
MAX_OFFER_BYTES = 64 * 1024
MAX_SDP_CHARS = 60_000


@dataclass(frozen=True, slots=True)
class OfferRequest:
    sdp: str
    token: str
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def parse_offer(body: bytes) -> OfferRequest:
    """The ``POST /webrtc/offer`` body, checked field by field."""
    if len(body) > MAX_OFFER_BYTES:
        raise BadRequest(f"the offer body is larger than {MAX_OFFER_BYTES} bytes")
    try:
        value = strictjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the offer body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the offer body must be a JSON object")
    sdp, kind, token = value.get("sdp"), value.get("type"), value.get("token")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("sdp must be a non-empty string")
    if len(sdp) > MAX_SDP_CHARS:
        raise BadRequest(f"sdp is longer than {MAX_SDP_CHARS} characters")
    if kind != "offer":
        raise BadRequest('type must be "offer"')
    if not isinstance(token, str) or not token:
        raise BadRequest("token must be a non-empty string")
    if len(token) > MAX_TOKEN_LENGTH:
        raise BadRequest("token is too long")
    return OfferRequest(sdp, token, _object(value, "config"), _object(value, "metadata"))


def _object(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    raw = value.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{name} must be a JSON object")
    return raw


def filter_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the keys a browser may set, the names of the keys dropped), CONTRACT §3."""
    kept = {k: v for k, v in config.items() if k in BROWSER_CONFIG_KEYS}
    dropped = sorted(k for k in config if k not in BROWSER_CONFIG_KEYS)
    return kept, dropped


def merge_metadata(browser: Mapping[str, Any], sealed: Mapping[str, Any]) -> dict[str, Any]:
    """``call.started.metadata``: the browser's keys, then the sealed ones on top (sealed wins)."""
    return {**browser, **sealed}
