"""API key material: prefixes, digests, Bearer parsing."""

from __future__ import annotations

import pytest

from server.core.apikeys import (
    KeyKind,
    digest,
    kind_of,
    new_key_id,
    new_secret,
    parse_bearer,
    same_digest,
    valid_org_id,
)


def test_secret_and_publishable_prefixes() -> None:
    assert new_secret(KeyKind.SECRET).startswith("sk_live_")
    assert new_secret(KeyKind.PUBLISHABLE).startswith("pk_publishable_")
    assert kind_of(new_secret(KeyKind.PUBLISHABLE)) is KeyKind.PUBLISHABLE
    assert kind_of("anything-else") is KeyKind.SECRET


def test_digest_is_stable_and_hides_the_key() -> None:
    key = new_secret(KeyKind.SECRET)
    assert digest(key) == digest(key)
    assert key not in digest(key)
    assert len(digest(key)) == 64
    assert same_digest(digest(key), digest(key))
    assert not same_digest(digest(key), digest(key + "x"))


def test_key_ids_are_unique() -> None:
    assert len({new_key_id() for _ in range(500)}) == 500


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", ""),
        ("Bearer", ""),
        ("Bearer a b", ""),
        ("abc", ""),
        ("Bearer " + "x" * 300, ""),
    ],
)
def test_parse_bearer(header: str | None, expected: str | None) -> None:
    assert parse_bearer(header) == expected


@pytest.mark.parametrize(
    ("org", "ok"),
    [("acme", True), ("a-b_c.d", True), ("", False), ("a/b", False), ("é", False), ("x" * 65, False)],
)
def test_org_ids(org: str, ok: bool) -> None:
    assert valid_org_id(org) is ok
