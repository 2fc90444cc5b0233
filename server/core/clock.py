"""A clock that a test can move: the base clock plus an offset (``POST /_voice/clock``).

The node holds two, one over wall time (token expiry, the journal) and one over the monotonic
clock (session idle and maximum timers), and sets the same offset on both. With inspection off
the offset is never set and stays 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ShiftedClock:
    __slots__ = ("_base", "offset")

    def __init__(self, base: Callable[[], float] = time.time, offset: float = 0.0) -> None:
        self._base = base
        self.offset = offset

    def __call__(self) -> float:
        return self._base() + self.offset
