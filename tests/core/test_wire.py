"""Frame parsing never raises anything but a VoiceError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.wire import error_frame, parse_frame, text_field
from server.errors import BadRequest, PayloadTooLarge, VoiceError


def test_a_good_frame() -> None:
    assert parse_frame('{"event": "ping"}', 100) == {"event": "ping"}


@pytest.mark.parametrize("bad", ["", "nope", "[]", "1", '{"x": 1}', '{"event": ""}', '{"event": 3}', None])
def test_bad_frames(bad: str | None) -> None:
    with pytest.raises(BadRequest):
        parse_frame(bad, 100)


def test_oversized_frame() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_frame('{"event": "' + "x" * 200 + '"}', 100)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_arbitrary_input_only_raises_voice_errors(data: str | bytes) -> None:
    with contextlib.suppress(VoiceError):
        parse_frame(data, 150)


def test_error_frame_drops_absent_extras() -> None:
    assert error_frame("bad", "X", agent_id=None) == {"event": "error", "error": "bad", "code": "X"}


def test_text_field() -> None:
    assert text_field({"a": "x"}, "a") == "x"
    assert text_field({}, "a", required=False) is None
    with pytest.raises(BadRequest):
        text_field({"a": 1}, "a")
    with pytest.raises(BadRequest):
        text_field({"a": "xx"}, "a", max_length=1)
