"""Agent ids are slugified the same way on registration and on mint (CONTRACT §1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.core.slugs import agent_slug, slugify
from server.errors import BadRequest


@pytest.mark.parametrize(
    ("raw", "slug"),
    [
        ("Florencia", "florencia"),
        ("my_agent", "my-agent"),
        ("My Agent", "my-agent"),
        ("a.b!c", "abc"),
        ("ÁgEnt", "gent"),
    ],
)
def test_slugify(raw: str, slug: str) -> None:
    assert slugify(raw) == slug


@pytest.mark.parametrize("bad", [None, "", "   ", "!!!", 42, "x" * 129])
def test_unusable_agent_ids_are_bad_requests(bad: object) -> None:
    with pytest.raises(BadRequest):
        agent_slug(bad)


@given(st.text(max_size=64))
def test_slugify_is_idempotent_and_safe(raw: str) -> None:
    slug = slugify(raw)
    assert slugify(slug) == slug
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
