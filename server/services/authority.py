"""The token authority: mint and consume (CONTRACT §1-2).

Mint: sign the claims, then store the token id with its TTL and count the caller's rate
limits in the same store operation. Consume: verify by arithmetic (forged, expired and
wrong-channel tokens never reach the store), then one atomic delete decides single use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from server.core.tokens import LEEWAY_SECONDS, Channel, Claims, JtiSource, TokenCodec
from server.errors import RateLimited, TokenExpired, TokenSpent, VoiceError
from server.metrics import Metrics
from server.store.base import Hit, TokenStore

if TYPE_CHECKING:
    from server.services.faults import FaultBoard
    from server.services.journal import Journal

Clock = Callable[[], float]
# The stored id outlives the signed expiry by the verification leeway plus clock skew between
# nodes, so a token that still verifies is never reported spent just because its id expired.
STORE_GRACE_SECONDS = 3.0


class Minted(NamedTuple):
    token: str
    claims: Claims
    expires_in: int


class Authority:
    def __init__(
        self,
        codec: TokenCodec,
        store: TokenStore,
        ttl: float,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._codec = codec
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._metrics = metrics
        self._new_jti = JtiSource()
        self.journal: Journal | None = None  # set by the node when inspection is on
        self.faults: FaultBoard | None = None  # likewise

    async def mint(
        self,
        *,
        org_id: str,
        agents: Sequence[str],
        channel: Channel,
        metadata: Mapping[str, Any] | None = None,
        scope: str | None = None,
        call_id: str | None = None,
        hits: Sequence[Hit] = (),
    ) -> Minted:
        now = self._clock()
        claims = Claims(
            jti=self._new_jti(),
            org_id=org_id,
            agents=tuple(agents),
            channel=channel,
            issued_at=now,
            expires_at=now + self._ttl,
            metadata=dict(metadata or {}),
            scope=scope,
            call_id=call_id,
        )
        token = self._codec.encode(claims)
        faults = self.faults
        if faults is not None and faults.active:
            await faults.store_fault()
        verdict = await self._store.issue_token(claims.jti, self._ttl + STORE_GRACE_SECONDS, hits)
        if not verdict.allowed:
            raise RateLimited("Too many token requests; slow down", verdict.retry_after)
        journal = self.journal
        if journal is not None:
            journal.note(
                "mint.allowed",
                jti=claims.jti,
                org=org_id,
                agents=list(claims.agents),
                channel=channel.value,
                expires_at=round(claims.expires_at, 3),
            )
        return Minted(token, claims, round(self._ttl))

    @property
    def now(self) -> float:
        return self._clock()

    def verify(self, token: str, channel: Channel) -> Claims:
        """Check signature, expiry and channel without consuming (and without the store). Session
        paths check before they reserve a slot, so a refusal here counts as a refused consume."""
        try:
            return self._codec.decode(token, channel, self._clock())
        except VoiceError as exc:
            self._refused(exc, channel)
            raise

    async def consume(self, token: str, channel: Channel, journaled: bool = True) -> Claims:
        """The claims of ``token`` if this is its first use on ``channel``; else the one error.

        ``journaled=False``: the caller journals the consume itself once it knows the session
        (services/admission.py, through the session's reservation)."""
        try:
            claims = self._codec.decode(token, channel, self._clock())
        except VoiceError as exc:
            self._refused(exc, channel)
            raise
        return await self.spend(claims, channel, journaled)

    async def spend(self, claims: Claims, channel: Channel, journaled: bool = True) -> Claims:
        """Consume a token :meth:`verify` has just checked: its single use only, in the store.
        The admission path verifies before it reserves a slot and spends after; decoding the
        token again (HMAC, base64, JSON) was ~10 % of a chat session's server CPU (issue 11)."""
        try:
            faults = self.faults
            if faults is not None and faults.active:
                faults.refusal("consume", channel=channel.value)
                await faults.store_fault()
            if self._clock() > claims.expires_at + LEEWAY_SECONDS:  # it may have waited for a handoff
                raise TokenExpired("token has expired")
            if not await self._store.consume_token(claims.jti):
                raise TokenSpent("token has already been used")
        except VoiceError as exc:
            self._refused(exc, channel)
            raise
        if self._metrics is not None:
            self._metrics.count_consume(channel.value)
        if journaled and self.journal is not None:
            self.journal.note("consume.allowed", jti=claims.jti, channel=channel.value, session_id=None)
        return claims

    def _refused(self, exc: VoiceError, channel: Channel) -> None:
        if self._metrics is not None:
            self._metrics.refused.labels("consume", exc.code).inc()
        if self.journal is not None:
            self.journal.note("consume.refused", code=exc.code, channel=channel.value)
