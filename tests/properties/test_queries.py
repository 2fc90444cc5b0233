"""Query strings, metadata and store URLs: the mint's fast query parser against the router's
(``parse_qsl``, the differential property), and the store URL's ports (``²`` and other unicode
digits passed ``str.isdigit``)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from server.store import _hosts
from server.web.tokens import parse_query

QUERY_CHARS = st.characters(codec="latin-1") | st.sampled_from("=&%+;#?/ ")
QUERY = st.text(QUERY_CHARS, max_size=120)
PLAIN = st.lists(
    st.tuples(
        st.from_regex(r"[a-z_]{0,8}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9._,:-]{0,12}", fullmatch=True),
    ),
    max_size=6,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


@given(QUERY | PLAIN)
def test_the_fast_query_parser_agrees_with_parse_qsl(query: str) -> None:
    assert parse_query(query) == dict(parse_qsl(query, keep_blank_values=True))


@given(PLAIN)
def test_the_fast_query_parser_agrees_with_starlette_on_what_the_sdks_send(query: str) -> None:
    ours = parse_query(query)
    theirs = QueryParams(query)
    assert ours == {k: theirs.getlist(k)[-1] for k in theirs}


@given(st.text(max_size=60))
def test_any_store_netloc_is_hosts_or_a_value_error(netloc: str) -> None:
    try:
        _, hosts = _hosts(netloc)
    except ValueError:
        return
    assert all(port >= 0 and str(port).isascii() for _, port in hosts)


# "²", Arabic-Indic "١٢٣", fullwidth "6379": all pass str.isdigit()
@pytest.mark.parametrize("port", ["\u00b2", "\u0661\u0662\u0663", "\uff16\uff13\uff17\uff19"])
def test_a_port_of_unicode_digits_is_refused(port: str) -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        _hosts(f"127.0.0.1:{port}")
