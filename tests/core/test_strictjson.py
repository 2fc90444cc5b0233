"""server/core/strictjson.py: strict JSON in, so only valid JSON goes out (issue 15)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core import strictjson


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # RecursionError in the stdlib parser
        '{"a":' * 5_000 + "1" + "}" * 5_000,
        "[" * (strictjson.MAX_DEPTH + 1) + "]" * (strictjson.MAX_DEPTH + 1),
        '{"x": NaN}',
        '{"x": Infinity}',
        "[-Infinity]",
        '{"metadata": {"name": "\\ud800"}}',
        '{"\\udfff": 1}',
        "[1,",
    ],
)
def test_hostile_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        strictjson.loads(text)
    with pytest.raises(ValueError):
        strictjson.loads(text.encode())


def test_nesting_up_to_the_bound_and_valid_pairs_are_accepted() -> None:
    depth = strictjson.MAX_DEPTH
    assert strictjson.loads("[" * depth + "]" * depth) is not None
    assert strictjson.loads('{"emoji": "\\ud83d\\ude00", "n": 1.5e3}') == {"emoji": "😀", "n": 1500.0}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@given(_json)
def test_what_it_accepts_round_trips_through_a_strict_encoder(value: object) -> None:
    text = json.dumps(value)
    try:
        parsed = strictjson.loads(text)
    except ValueError:
        return  # a lone surrogate from st.text(), or deeper than the bound
    again = json.dumps(parsed, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert json.loads(again) == parsed


@given(st.binary(max_size=200))
def test_any_bytes_are_json_or_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        strictjson.loads(data)
