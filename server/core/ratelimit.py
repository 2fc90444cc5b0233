"""Rate-limit arithmetic: parsing ``20/second`` and judging a fixed-window count.

The counting itself happens in the store (one atomic INCR with an expiry per window);
this module only decides what a count means, so it is tested without a store.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

_PERIODS = {"second": 1.0, "s": 1.0, "minute": 60.0, "m": 60.0, "hour": 3600.0, "h": 3600.0}
_FORM = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|s|m|h)s?\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``count`` hits allowed per ``period`` seconds; ``count == 0`` means unlimited."""

    count: int
    period: float

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        return "off" if not self.enabled else f"{self.count}/{self.period:g}s"


OFF = RateLimit(0, 1.0)


def parse_rate(text: str) -> RateLimit:
    """Parse ``"20/second"``, ``"600/minute"``, ``"5/10s"``, or ``"0"`` (off). Raises ValueError."""
    if text.strip() in ("0", "off", ""):
        return OFF
    match = _FORM.match(text.lower())
    if match is None:
        raise ValueError(f"expected N/second, N/minute, N/hour or 0, got {text!r}")
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    if multiple == 0:
        raise ValueError(f"period must be positive in {text!r}")
    return RateLimit(count, _PERIODS[unit] * multiple)


class Verdict(NamedTuple):  # per request: immutable and cheaper to build than a frozen dataclass
    allowed: bool
    retry_after: int  # whole seconds until the window resets (≥ 1 when refused)


def judge(limit: RateLimit, count: int, ttl_ms: int) -> Verdict:
    """Judge the ``count``-th hit in a window whose remaining lifetime is ``ttl_ms``."""
    if not limit.enabled or count <= limit.count:
        return Verdict(True, 0)
    remaining = ttl_ms / 1000 if ttl_ms > 0 else limit.period
    return Verdict(False, max(1, math.ceil(remaining)))


def window_ms(limit: RateLimit) -> int:
    return max(1, int(limit.period * 1000))
