"""Origin headers and ``allowed_origins`` patterns (server/core/origins.py), any text in."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from server.core.origins import Origin, origin_allowed, parse_origin, parse_pattern, parse_patterns
from server.errors import InvalidOriginPattern

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(lambda s: not s.isdigit())
TLD = st.sampled_from(["com", "org", "example", "test", "dev"])  # a number-like last label is an IP
HOST = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD)
ORIGIN = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}" + ("" if port is None else f":{port}"),
    st.sampled_from(["http", "https"]),
    HOST,
    st.none() | st.integers(1, 65535),
)


@given(st.text(max_size=300))
def test_any_origin_header_parses_or_is_none(value: str) -> None:
    origin = parse_origin(value)
    assert origin is None or isinstance(origin, Origin)


@given(st.text(max_size=300))
def test_any_pattern_parses_or_is_refused_with_the_pattern_error(raw: str) -> None:
    with contextlib.suppress(InvalidOriginPattern):
        parse_pattern(raw)


@given(st.lists(st.text(max_size=60) | st.integers() | st.none(), max_size=5))
def test_any_allowed_origins_value_parses_or_is_refused(raws: list[object]) -> None:
    with contextlib.suppress(InvalidOriginPattern):
        parse_patterns(raws)


@given(ORIGIN)
def test_a_wellformed_origin_round_trips_and_matches_itself_as_a_pattern(text: str) -> None:
    origin = parse_origin(text)
    assert origin is not None
    assert parse_origin(str(origin)) == origin
    assert origin_allowed([parse_pattern(str(origin))], text) == origin


@given(ORIGIN, st.text(max_size=60))
def test_an_exact_pattern_matches_only_its_own_origin(text: str, other: str) -> None:
    pattern = parse_pattern(text)
    matched = origin_allowed([pattern], other)
    assert matched is None or matched == parse_origin(text)


@given(HOST, LABEL, st.sampled_from(["http", "https"]))
def test_a_wildcard_matches_subdomains_but_not_the_parent_or_lookalikes(
    parent: str, label: str, scheme: str
) -> None:
    try:
        pattern = parse_pattern(f"{scheme}://*.{parent}")
    except InvalidOriginPattern:
        return  # a public suffix (*.co.uk) or too broad: refused at registration
    assert origin_allowed([pattern], f"{scheme}://{label}.{parent}") is not None
    assert origin_allowed([pattern], f"{scheme}://{parent}") is None
    assert origin_allowed([pattern], f"{scheme}://{label}{parent}") is None
    assert origin_allowed([pattern], f"{scheme}://{label}.{parent}.evil.example") is None
