"""Rate-limit arithmetic: parsing limits and judging a window count."""

from __future__ import annotations

import pytest

from server.core.ratelimit import OFF, RateLimit, judge, parse_rate, window_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20/second", RateLimit(20, 1)),
        ("600/minute", RateLimit(600, 60)),
        ("5/hour", RateLimit(5, 3600)),
        ("5/10s", RateLimit(5, 10)),
        ("7/2minutes", RateLimit(7, 120)),
        (" 3 / second ", RateLimit(3, 1)),
        ("0", OFF),
        ("off", OFF),
    ],
)
def test_parse_rate_forms(text: str, expected: RateLimit) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("bad", ["abc", "10", "10/fortnight", "-1/second", "5/0s", "1.5/second"])
def test_parse_rate_refuses_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


def test_within_limit_is_allowed() -> None:
    limit = RateLimit(3, 1)
    assert all(judge(limit, n, 900).allowed for n in (1, 2, 3))


def test_over_limit_is_refused_with_retry_after_rounded_up() -> None:
    verdict = judge(RateLimit(3, 60), 4, 12_300)
    assert not verdict.allowed
    assert verdict.retry_after == 13


def test_retry_after_is_at_least_one_second() -> None:
    assert judge(RateLimit(1, 1), 2, 10).retry_after == 1


def test_a_disabled_limit_never_refuses() -> None:
    assert judge(OFF, 10**9, 0).allowed
    assert not OFF.enabled


def test_window_length_in_ms() -> None:
    assert window_ms(RateLimit(1, 60)) == 60_000
