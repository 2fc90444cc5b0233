"""WebSocket frames (server/core/wire.py: ``/client``, ``/chat/ws``, ``/ws/stream``) and the
stream socket's query string: any JSON and any text or bytes is a frame or a BadRequest /
PayloadTooLarge, never another exception; ``after=²`` (a unicode digit) crashed the stream."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st
from starlette.websockets import WebSocket

from server.core.wire import parse_frame, parse_object, text_field
from server.errors import BadRequest, PayloadTooLarge, VoiceError
from server.realtime.stream_ws import MAX_AFTER, _Query
from tests.properties.conftest import ANY_CHAR

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(ANY_CHAR, max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
LIMIT = 4096


@given(JSON)
def test_any_json_value_is_a_frame_or_a_bad_request(value: object) -> None:
    text = json.dumps(value)
    try:
        frame = parse_frame(text, LIMIT)
    except (BadRequest, PayloadTooLarge):
        return
    assert isinstance(frame, dict) and isinstance(frame["event"], str) and frame["event"]


@given(st.text(ANY_CHAR, max_size=500) | st.binary(max_size=500))
def test_any_text_or_bytes_is_an_object_or_refused(raw: str | bytes) -> None:
    """Lone surrogates in text raised UnicodeEncodeError in the size check."""
    with contextlib.suppress(BadRequest, PayloadTooLarge):
        assert isinstance(parse_object(raw, LIMIT), dict)


def test_a_frame_holding_a_lone_surrogate_is_a_bad_request() -> None:
    for raw in ('{"event":"x","a":"\ud800"}', "\ud800", '{"event":"\\ud800"}'):
        try:
            parse_object(raw, LIMIT)
        except BadRequest:
            continue
        raise AssertionError(raw)


@given(
    st.dictionaries(st.text(ANY_CHAR, max_size=8), JSON, max_size=4),
    st.text(ANY_CHAR, max_size=8),
    st.booleans(),
)
def test_text_field_returns_a_string_or_a_bad_request(
    frame: dict[str, object], name: str, required: bool
) -> None:
    try:
        value = text_field(frame, name, 50, required)
    except BadRequest:
        return
    assert value is None or (isinstance(value, str) and len(value) <= 50)


def stream_query(query: bytes) -> _Query:
    scope = {"type": "websocket", "path": "/ws/stream", "query_string": query, "headers": []}

    async def never() -> dict[str, object]:
        raise AssertionError("not read")

    async def nowhere(message: object) -> None:
        raise AssertionError("not sent")

    return _Query(WebSocket(scope, never, nowhere))


@given(st.binary(max_size=200))
def test_any_stream_query_string_is_parsed_or_a_bad_request(query: bytes) -> None:
    try:
        parsed = stream_query(query)
    except BadRequest:
        return
    assert parsed.after is None or 0 <= parsed.after <= MAX_AFTER


@given(st.text(max_size=6).filter(lambda s: s and not (s.isascii() and s.isdigit())))
def test_after_that_is_not_ascii_digits_is_a_bad_request(after: str) -> None:
    from urllib.parse import quote

    try:
        stream_query(f"token=x&after={quote(after)}".encode())
    except BadRequest as exc:
        assert "after must be" in exc.detail or isinstance(exc, VoiceError)
        return
    raise AssertionError(f"accepted after={after!r}")


def test_after_with_a_superscript_two_is_a_bad_request() -> None:
    for after in ("%C2%B2", "%D9%A1%D9%A2"):  # "²" and Arabic-Indic "١٢"
        try:
            stream_query(f"token=x&after={after}".encode())
        except BadRequest:
            continue
        raise AssertionError(after)
