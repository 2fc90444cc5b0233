"""The fault board (services/faults.py) on the memory store: shared list, counts written back,
probability, and the WhatsApp Graph hook against a real HTTP fake."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from server.errors import InjectedFault, StoreUnavailable
from server.services.faults import FaultBoard
from server.services.whatsapp_sessions import GraphClient, GraphError
from server.store.memory import MemoryStore
from tests.support.fake_graph import FakeGraph


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _notify(kind: str, key: str) -> None:
    return None


def board(store: MemoryStore, clock: Clock, chance: float = 0.0) -> FaultBoard:
    return FaultBoard(store, None, clock, _notify, chance=lambda: chance)


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph()
    fake.start()
    yield fake
    fake.stop()


async def test_a_fault_added_on_one_board_applies_on_another_after_reload() -> None:
    store, clock = MemoryStore(), Clock()
    a, b = board(store, clock), board(store, clock)
    await a.add({"target": "mint", "kind": "fail", "status": 418, "code": "teapot", "count": 1})
    assert not b.active
    await b.reload()
    with pytest.raises(InjectedFault) as refused:
        b.refusal("mint", channel="chat", agent_id="x")
    assert (refused.value.status, refused.value.code) == (418, "teapot")
    b.refusal("mint", channel="chat", agent_id="x")  # its one application is spent
    for _ in range(100):  # the count is written back without the failing path waiting for it
        if not await a.items():
            break
        await asyncio.sleep(0.01)
    assert await a.items() == []


async def test_seconds_expire_with_the_clock() -> None:
    store, clock = MemoryStore(), Clock()
    faults = board(store, clock)
    await faults.add({"target": "store", "kind": "unavailable", "seconds": 5})
    with pytest.raises(StoreUnavailable):
        await faults.store_fault()
    clock.now += 5
    await faults.store_fault()  # expired: nothing happens
    assert await faults.items() == []


async def test_probability_applies_to_that_share() -> None:
    store, clock = MemoryStore(), Clock()
    unlucky, lucky = board(store, clock, chance=0.2), board(store, clock, chance=0.9)
    await unlucky.add({"target": "consume", "kind": "fail", "status": 500, "code": "x", "probability": 0.5})
    await lucky.reload()
    assert lucky.check("consume", channel="chat") is None
    assert unlucky.check("consume", channel="chat") is not None


async def test_deleting_one_or_all() -> None:
    faults = board(MemoryStore(), Clock())
    first = await faults.add({"target": "store", "kind": "unavailable"})
    await faults.add({"target": "store", "kind": "slow", "delay_ms": 5})
    assert await faults.delete(first.id) == 1
    assert await faults.delete(None) == 1
    assert await faults.delete(None) == 0


async def test_graph_calls_fail_or_wait_as_told(graph: FakeGraph) -> None:
    faults = board(MemoryStore(), Clock())
    async with httpx.AsyncClient() as http:
        client = GraphClient(graph.url, http, backoff=0.01)
        client.before_send = faults.graph_fault
        await faults.add({"target": "whatsapp", "kind": "fail", "status": 400, "count": 1})
        with pytest.raises(GraphError) as failed:
            await client.send_text("123", "token", "456", "hi")
        assert failed.value.status == 400 and graph.requests == []
        await faults.delete(None)
        await faults.add({"target": "whatsapp", "kind": "delay", "delay_ms": 200, "count": 1})
        started = time.monotonic()
        assert await client.send_text("123", "token", "456", "hi")
        assert time.monotonic() - started >= 0.2 and len(graph.requests) == 1
