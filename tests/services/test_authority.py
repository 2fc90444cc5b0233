"""Mint and consume: single use, expiry, channel scope, and forged tokens that never reach the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from server.core.ratelimit import RateLimit, Verdict
from server.core.tokens import Channel, TokenCodec
from server.errors import (
    RateLimited,
    StoreUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenSpent,
    TokenWrongChannel,
)
from server.services.authority import Authority
from server.store import Store
from server.store.base import Hit
from tests.conftest import FakeClock


class CountingStore:
    """A boundary fake: counts token-store calls, delegating to a real store."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.consumes = 0

    async def issue_token(self, jti: str, ttl: float, hits: Sequence[Hit]) -> Verdict:
        return await self.inner.issue_token(jti, ttl, hits)

    async def consume_token(self, jti: str) -> bool:
        self.consumes += 1
        return await self.inner.consume_token(jti)

    async def hit(self, hits: Sequence[Hit]) -> Verdict:
        return await self.inner.hit(hits)


class DownStore(CountingStore):
    async def issue_token(self, jti: str, ttl: float, hits: Sequence[Hit]) -> Verdict:
        raise StoreUnavailable("down")

    async def consume_token(self, jti: str) -> bool:
        raise StoreUnavailable("down")


def authority(store: object, clock: FakeClock, ttl: float = 60) -> Authority:
    return Authority(TokenCodec(["s1"]), store, ttl, clock)  # type: ignore[arg-type]


async def test_a_token_is_consumed_once(store: Store, clock: FakeClock) -> None:
    auth = authority(store, clock)
    minted = await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT, metadata={"k": "v"})
    assert minted.expires_in == 60
    claims = await auth.consume(minted.token, Channel.CHAT)
    assert (claims.org_id, claims.agent_id, dict(claims.metadata)) == ("acme", "a", {"k": "v"})
    with pytest.raises(TokenSpent):
        await auth.consume(minted.token, Channel.CHAT)


async def test_racing_consumes_have_one_winner(store: Store, clock: FakeClock) -> None:
    auth = authority(store, clock)
    minted = await auth.mint(org_id="acme", agents=["a"], channel=Channel.WEBRTC)

    async def attempt() -> bool:
        try:
            await auth.consume(minted.token, Channel.WEBRTC)
        except TokenSpent:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(200)))
    assert results.count(True) == 1


async def test_expired_tokens_fail_without_the_store(store: Store, clock: FakeClock) -> None:
    counting = CountingStore(store)
    auth = authority(counting, clock)
    minted = await auth.mint(org_id="acme", agents=["a"], channel=Channel.WEBRTC)
    clock.advance(61.5)
    with pytest.raises(TokenExpired):
        await auth.consume(minted.token, Channel.WEBRTC)
    assert counting.consumes == 0


async def test_forged_and_wrong_channel_tokens_never_touch_the_store(store: Store, clock: FakeClock) -> None:
    counting = CountingStore(store)
    auth = authority(counting, clock)
    minted = await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT)
    with pytest.raises(TokenWrongChannel):
        await auth.consume(minted.token, Channel.WEBRTC)
    with pytest.raises(TokenInvalid):
        await auth.consume(minted.token[:-2] + "xx", Channel.CHAT)
    assert counting.consumes == 0
    assert await auth.consume(minted.token, Channel.CHAT)  # the refusals did not burn it


async def test_rate_limited_mint_raises_with_retry_after(store: Store, clock: FakeClock) -> None:
    auth = authority(store, clock)
    hits = [Hit("k:key", RateLimit(1, 60))]
    await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT, hits=hits)
    with pytest.raises(RateLimited) as refused:
        await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT, hits=hits)
    assert refused.value.headers()["Retry-After"] == str(refused.value.retry_after)


async def test_the_store_fails_closed(clock: FakeClock) -> None:
    from server.store import MemoryStore

    auth = authority(DownStore(MemoryStore()), clock)
    with pytest.raises(StoreUnavailable):
        await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT)
    token = await authority(MemoryStore(), clock).mint(org_id="acme", agents=["a"], channel=Channel.CHAT)
    with pytest.raises(StoreUnavailable):
        await auth.consume(token.token, Channel.CHAT)


async def test_spend_consumes_verified_claims_once_and_checks_expiry(store: Store, clock: FakeClock) -> None:
    """The admission path verifies, then spends the claims it verified: single use still holds,
    a token that expired meanwhile (a handoff wait) is refused without the store."""
    counting = CountingStore(store)
    auth = authority(counting, clock)
    minted = await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT)
    claims = auth.verify(minted.token, Channel.CHAT)
    assert await auth.spend(claims, Channel.CHAT) == claims
    with pytest.raises(TokenSpent):
        await auth.spend(claims, Channel.CHAT)
    with pytest.raises(TokenSpent):
        await auth.consume(minted.token, Channel.CHAT)
    later = await auth.mint(org_id="acme", agents=["a"], channel=Channel.CHAT)
    verified = auth.verify(later.token, Channel.CHAT)
    consumes = counting.consumes
    clock.advance(62)
    with pytest.raises(TokenExpired):
        await auth.spend(verified, Channel.CHAT)
    assert counting.consumes == consumes
