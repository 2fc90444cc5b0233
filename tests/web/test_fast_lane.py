"""The mint routes' fast lane: same answers as the router would give, same query parsing."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from server.web.tokens import parse_query

QUERY_CHARS = st.sampled_from([*"ab=&%+;,. _-~é\x00", "%20", "%2", "%C3%A9", "%ZZ", "=="])


@given(st.lists(QUERY_CHARS, max_size=40).map("".join))
def test_parse_query_is_parse_qsl_with_the_last_value_winning(query: str) -> None:
    assert parse_query(query) == dict(parse_qsl(query, keep_blank_values=True))


def test_parse_query_plain_pairs() -> None:
    assert parse_query("") == {}
    assert parse_query("agent_id=bench&scope=&flag") == {"agent_id": "bench", "scope": "", "flag": ""}
    assert parse_query("agent_id=a&agent_id=b") == {"agent_id": "b"}
