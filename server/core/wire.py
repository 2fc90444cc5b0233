"""Parsing of JSON frames on the WebSockets (CONTRACT §4 and §6), without any socket.

A frame is a JSON object with a string ``event``. Anything else is a :class:`BadRequest`
that the endpoint turns into an ``error`` frame; nothing here can crash a connection task.
"""

from __future__ import annotations

from typing import Any

from server.core import strictjson
from server.core.text import utf8
from server.errors import BadRequest, PayloadTooLarge

Frame = dict[str, Any]


def parse_frame(text: str | bytes | None, max_bytes: int, key: str = "event") -> Frame:
    """A JSON object with a non-empty string ``key``."""
    value = parse_object(text, max_bytes)
    name = value.get(key)
    if not isinstance(name, str) or not name:
        raise BadRequest(f"frame has no '{key}' field")
    return value


def parse_object(text: str | bytes | None, max_bytes: int) -> Frame:
    """A JSON object within ``max_bytes``; BadRequest / PayloadTooLarge otherwise."""
    if text is None:
        raise BadRequest("binary frames are not supported; send JSON text")
    size = len(text) if isinstance(text, bytes) else len(utf8(text))
    if size > max_bytes:
        raise PayloadTooLarge(f"frame of {size} bytes is larger than {max_bytes}")
    try:
        value = strictjson.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("frame is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("frame must be a JSON object")
    return value


def error_frame(detail: str, code: str, **extra: Any) -> Frame:
    return {
        "event": "error",
        "error": detail,
        "code": code,
        **{k: v for k, v in extra.items() if v is not None},
    }


def text_field(frame: Frame, name: str, max_length: int = 16_384, required: bool = True) -> str | None:
    value = frame.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"'{name}' must be a non-empty string")
    if len(value) > max_length:
        raise BadRequest(f"'{name}' is longer than {max_length} characters")
    return value
