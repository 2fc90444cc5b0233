"""The node-local cache never serves an entry older than its TTL."""

from __future__ import annotations

from server.core.cache import TtlCache
from tests.conftest import FakeClock


def test_entries_expire_with_the_clock(clock: FakeClock) -> None:
    cache: TtlCache[str, int] = TtlCache(1.0, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") == 1
    clock.advance(0.999)
    assert cache.get("a") == 1
    clock.advance(0.002)
    assert cache.get("a") is None


def test_drop_and_drop_where(clock: FakeClock) -> None:
    cache: TtlCache[str, int] = TtlCache(10, clock=clock)
    for i, key in enumerate("abc"):
        cache.put(key, i)
    cache.drop("a")
    cache.drop_where(lambda key, value: value == 2)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, 1, None)


def test_size_is_bounded_oldest_first(clock: FakeClock) -> None:
    cache: TtlCache[int, int] = TtlCache(10, max_entries=3, clock=clock)
    for i in range(5):
        cache.put(i, i)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == 4


def test_a_zero_ttl_disables_caching(clock: FakeClock) -> None:
    cache: TtlCache[str, int] = TtlCache(0, clock=clock)
    cache.put("a", 1)
    assert cache.get("a") is None
