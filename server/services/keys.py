"""API keys: create, authenticate, list, revoke. Keys live in the shared store as digests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from server.core import apikeys
from server.core.apikeys import ApiKey, KeyKind
from server.core.cache import TtlCache
from server.errors import BadRequest, InvalidApiKey
from server.store.base import Bus, KeyStore

INVALIDATE = "invalidate"  # the broadcast channel every node's Relay listens to

Clock = Callable[[], float]
TOUCH_EVERY = 60.0  # seconds between "last used" writes per key per node


class KeyService:
    def __init__(
        self, store: KeyStore, clock: Clock = time.time, cache_seconds: float = 1.0, bus: Bus | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._bus = bus
        self._touched: dict[str, float] = {}
        # digest -> key: a node-local copy for the hot path, never older than cache_seconds and
        # dropped on every node when a key is revoked (see Relay's "invalidate" channel).
        self._cache: TtlCache[str, ApiKey] = TtlCache(cache_seconds)
        self._configured: dict[str, ApiKey] = {}  # digest -> key, from VOICE_API_KEYS

    async def create(
        self, org_id: str, kind: KeyKind = KeyKind.SECRET, label: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and never stored."""
        if not apikeys.valid_org_id(org_id):
            raise BadRequest("org id must be 1-64 characters of letters, digits, '-', '_' or '.'")
        secret = apikeys.new_secret(kind)
        key = ApiKey(apikeys.new_key_id(), org_id, kind, self._clock(), label=label)
        await self._store.put_key(key, apikeys.digest(secret))
        return key, secret

    def configure(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Keys from ``VOICE_API_KEYS``: configuration, valid on every node that has it, whatever
        the store holds (they survive a store flush; remove one from the variable to revoke it)."""
        for org_id, secret in pairs:
            if not apikeys.valid_org_id(org_id):
                raise BadRequest(f"VOICE_API_KEYS: bad org id {org_id!r}")
            digest = apikeys.digest(secret)
            kind = apikeys.kind_of(secret)
            self._configured[digest] = ApiKey("key_" + digest[:16], org_id, kind, 0.0, label="VOICE_API_KEYS")

    async def authenticate(self, secret: str, kind: KeyKind | None = None) -> ApiKey:
        """The active key behind ``secret``; InvalidApiKey for unknown, revoked or wrong-kind keys."""
        digest = apikeys.digest(secret)
        key = self._configured.get(digest)
        if key is not None:
            if kind is not None and key.kind is not kind:
                raise InvalidApiKey("Invalid API key")
            return key
        key = self._cache.get(digest)
        if key is None and secret:
            key = await self._store.key_by_digest(digest)
            if key is not None:
                self._cache.put(digest, key)
        if key is None or not key.active_at(self._clock()) or (kind is not None and key.kind is not kind):
            raise InvalidApiKey("Invalid API key")
        now = self._clock()
        if now - self._touched.get(key.key_id, 0.0) >= TOUCH_EVERY:
            self._touched[key.key_id] = now
            await self._store.touch_key(key.key_id, now)
        return key

    async def list(self) -> list[ApiKey]:
        return await self._store.list_keys()

    async def revoke(self, key_id: str) -> ApiKey | None:
        key = await self._store.revoke_key(key_id, self._clock())
        self.forget(key_id)
        if key is not None and self._bus is not None:
            await self._bus.publish(INVALIDATE, json.dumps({"kind": "key", "key": key_id}))
        return key

    async def rotate(self, key_id: str, grace_seconds: float) -> tuple[ApiKey, str, ApiKey] | None:
        """A new key of the same org, kind and label; the old one keeps working for
        ``grace_seconds`` more, then fails like a revoked key (its /client sockets close then, on
        every node). None when there is no active key ``key_id``."""
        now = self._clock()
        old = next((k for k in await self._store.list_keys() if k.key_id == key_id), None)
        if old is None or not old.active_at(now):
            return None
        new, secret = await self.create(old.org_id, old.kind, old.label)
        ends = now + grace_seconds
        revoked = await self._store.revoke_key(key_id, ends)
        self.forget(key_id)
        if revoked is not None and self._bus is not None:
            message = {"kind": "key_expires", "key": f"{key_id}@{revoked.revoked_at}"}
            await self._bus.publish(INVALIDATE, json.dumps(message))
        return new, secret, revoked or old

    def forget(self, key_id: str) -> None:
        """Drop the cached copy of ``key_id`` (an invalidation from any node)."""
        self._cache.drop_where(lambda digest, key: key.key_id == key_id)
