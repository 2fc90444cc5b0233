"""Node presence: a node's own earlier beat is never taken for another process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from server.services.presence import NodePresence, presence_name
from server.store import MemoryStore

NAME = presence_name("node-a")


async def _beats_over(
    store: MemoryStore, value: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Start node-a, swap its held value for ``value(instance)``, and let two beats pass."""
    presence = NodePresence(store, "node-a", ttl=0.6, poll=0.05)
    await presence.start()
    try:
        current = await store.lookup_name(NAME)
        assert current is not None
        instance = current.partition(".")[0]
        await store.release_name(NAME, current)
        await store.claim_name(NAME, value(instance), 5.0)
        with caplog.at_level(logging.ERROR, logger="voice.node"):
            await asyncio.sleep(0.5)
    finally:
        await presence.stop()


async def test_a_stale_value_of_our_own_is_taken_back_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What a Sentinel failover leaves: the promoted replica holds one of our older beats
    # (replication is asynchronous), so releasing the previous beat's value does not match.
    store = MemoryStore()
    await _beats_over(store, lambda own: f"{own}.-7", caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Taken back, then released by the clean stop; the stale value would have stayed.
    assert await store.lookup_name(NAME) is None


async def test_another_process_holding_the_id_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    await _beats_over(MemoryStore(), lambda own: "someoneelse.3", caplog)
    assert any("also used by another running node" in r.getMessage() for r in caplog.records)
