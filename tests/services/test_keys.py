"""Key rotation: a new key at once, the old one until its grace ends (both stores)."""

from __future__ import annotations

import pytest

from server.core.apikeys import KeyKind
from server.errors import InvalidApiKey
from server.services.keys import KeyService
from server.store import Store
from tests.conftest import FakeClock


async def test_rotate_gives_a_new_key_and_keeps_the_old_one_for_the_grace(store: Store) -> None:
    clock = FakeClock()
    keys = KeyService(store, clock=clock, cache_seconds=0)
    old, old_secret = await keys.create("acme", KeyKind.SECRET, "backend")
    rotated = await keys.rotate(old.key_id, 60)
    assert rotated is not None
    new, new_secret, ended = rotated
    assert (new.org_id, new.kind, new.label) == (
        "acme",
        KeyKind.SECRET,
        "backend",
    ) and new.key_id != old.key_id
    assert ended.revoked_at == clock.now + 60
    assert (await keys.authenticate(new_secret)).key_id == new.key_id
    clock.now += 59
    assert (await keys.authenticate(old_secret)).key_id == old.key_id  # still in its grace
    clock.now += 1
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(old_secret)
    assert (await keys.authenticate(new_secret)).key_id == new.key_id
    assert await keys.rotate(old.key_id, 60) is None  # an ended key is not rotated again
    assert await keys.rotate("key_missing", 60) is None


async def test_a_revoke_during_the_grace_ends_the_old_key_at_once(store: Store) -> None:
    clock = FakeClock()
    keys = KeyService(store, clock=clock, cache_seconds=0)
    old, old_secret = await keys.create("acme")
    assert await keys.rotate(old.key_id, 3600) is not None
    await keys.revoke(old.key_id)
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(old_secret)
