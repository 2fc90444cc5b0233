"""API keys and Authorization headers (server/core/apikeys.py): any header parses to a
credential, ``""`` (malformed) or ``None``; digests never raise and compare in constant time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.core.apikeys import (
    MAX_KEY_LENGTH,
    KeyKind,
    digest,
    kind_of,
    parse_bearer,
    same_digest,
    valid_org_id,
)
from tests.properties.conftest import ANY_CHAR

TEXT = st.text(ANY_CHAR, max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))


@given(TEXT)
def test_any_authorization_header_parses_without_raising(header: str) -> None:
    credential = parse_bearer(header)
    assert credential is not None
    if credential:
        assert " " not in credential and len(credential) <= MAX_KEY_LENGTH
        assert kind_of(credential) in (KeyKind.SECRET, KeyKind.PUBLISHABLE)


@given(
    st.from_regex(r"[A-Za-z0-9_\-]{1,100}", fullmatch=True), st.sampled_from(["Bearer", "bearer", "BEARER"])
)
def test_a_bearer_header_gives_back_its_key(key: str, scheme: str) -> None:
    assert parse_bearer(f"{scheme} {key}") == key
    assert parse_bearer(f"  {scheme}   {key}  ") == key


@given(st.text(ANY_CHAR, max_size=200))
def test_any_text_has_a_digest_and_equal_digests_compare_equal(secret: str) -> None:
    """Lone surrogates raised UnicodeEncodeError (surrogateescape covers U+DC80-U+DCFF only)."""
    value = digest(secret)
    assert len(value) == 64
    assert same_digest(value, digest(secret))
    assert same_digest(secret, secret)


def test_a_lone_surrogate_has_a_digest() -> None:
    assert digest("sk_\ud800") != digest("sk_\ud801")
    assert digest("sk_\udcff") == digest("sk_\udcff")


@given(st.text(ANY_CHAR, max_size=80))
def test_any_org_id_is_judged_without_raising(org_id: str) -> None:
    assert valid_org_id(org_id) in (True, False)
