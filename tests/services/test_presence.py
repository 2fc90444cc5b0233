"""Node presence: a node's own earlier beat is never taken for another process."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.services.presence import NodePresence, presence_name
from server.store import MemoryStore


async def test_a_stale_value_of_our_own_is_taken_back_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What a Sentinel failover leaves: the promoted replica holds one of our older beats
    # (replication is asynchronous), so releasing the previous beat's value does not match.
    store = MemoryStore()
    presence = NodePresence(store, "node-a", ttl=0.6, poll=0.05)
    await presence.start()
    try:
        name = presence_name("node-a")
        current = await store.lookup_name(name)
        assert current is not None
        instance = current.partition(".")[0]
        await store.release_name(name, current)
        await store.claim_name(name, f"{instance}.-7", 5.0)
        with caplog.at_level(logging.ERROR, logger="voice.node"):
            await asyncio.sleep(0.5)  # past two beats
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        held = await store.lookup_name(name)
        assert held is not None and held.startswith(instance + ".") and held != f"{instance}.-7"
    finally:
        await presence.stop()


async def test_another_process_holding_the_id_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    presence = NodePresence(store, "node-a", ttl=0.6, poll=0.05)
    await presence.start()
    try:
        name = presence_name("node-a")
        current = await store.lookup_name(name)
        assert current is not None
        await store.release_name(name, current)
        await store.claim_name(name, "someoneelse.3", 5.0)
        with caplog.at_level(logging.ERROR, logger="voice.node"):
            await asyncio.sleep(0.5)
        assert any("also used by another running node" in r.getMessage() for r in caplog.records)
    finally:
        await presence.stop()
