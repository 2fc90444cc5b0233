"""Fault specs (core/faults.py): parsing, matching, counts, seconds, probability, expiry."""

from __future__ import annotations

from typing import Any

import pytest

from server.core.faults import DEFAULT_SECONDS, Fault, parse_fault
from server.errors import InvalidRequest

NOW = 1_000_000.0


def parse(body: dict[str, Any]) -> Fault:
    return parse_fault(body, NOW, lambda: "flt_1")


def test_a_fault_without_count_or_seconds_ends_by_itself() -> None:
    fault = parse({"target": "store", "kind": "unavailable"})
    assert fault.expires_at == NOW + DEFAULT_SECONDS and fault.remaining is None
    assert fault.live(NOW + DEFAULT_SECONDS - 1) and not fault.live(NOW + DEFAULT_SECONDS)


def test_a_count_ends_it_after_that_many_applications() -> None:
    fault = parse({"target": "mint", "kind": "fail", "status": 503, "code": "boom", "count": 2})
    assert fault.expires_at is None and fault.remaining == 2
    once = fault.apply()
    assert once.live(NOW) and (once.remaining, once.applied) == (1, 1)
    assert not once.apply().live(NOW)


def test_count_and_seconds_end_it_at_whichever_comes_first() -> None:
    fault = parse({"target": "store", "kind": "slow", "delay_ms": 10, "count": 5, "seconds": 2})
    assert not fault.live(NOW + 2)
    assert fault.live(NOW + 1)


def test_matching_follows_target_channel_and_agent() -> None:
    fault = parse(
        {"target": "mint", "kind": "fail", "status": 429, "code": "x", "channel": "chat", "agent_id": "a"}
    )
    assert fault.matches("mint", NOW, {"channel": "chat", "agent_id": "a"})
    assert not fault.matches("mint", NOW, {"channel": "webrtc", "agent_id": "a"})
    assert not fault.matches("mint", NOW, {"channel": "chat", "agent_id": "b"})
    assert not fault.matches("consume", NOW, {"channel": "chat"})
    anywhere = parse({"target": "consume", "kind": "fail", "status": 500, "code": "y"})
    assert anywhere.matches("consume", NOW, {"channel": "stream"})


def test_an_item_round_trips() -> None:
    fault = parse({"target": "whatsapp", "kind": "fail", "status": 500, "probability": 0.25})
    item = fault.to_item()
    assert item["params"] == {"status": 500} and item["status"] == 500 and item["applied"] == 0
    assert Fault.from_item(item) == fault


@pytest.mark.parametrize(
    "body",
    [
        {"target": "nowhere", "kind": "fail"},
        {"target": "mint", "kind": "explode"},
        {"target": "mint", "kind": "fail", "code": "x"},  # no status
        {"target": "mint", "kind": "fail", "status": 200, "code": "x"},
        {"target": "mint", "kind": "fail", "status": 503, "code": "Not A Code"},
        {"target": "mint", "kind": "fail", "status": 503, "code": "x", "channel": "fax"},
        {"target": "store", "kind": "slow"},
        {"target": "store", "kind": "slow", "delay_ms": 0},
        {"target": "store", "kind": "slow", "delay_ms": 1.5},
        {"target": "client", "kind": "drop"},
        {"target": "store", "kind": "unavailable", "count": 0},
        {"target": "store", "kind": "unavailable", "count": 1.5},
        {"target": "store", "kind": "unavailable", "seconds": -1},
        {"target": "store", "kind": "unavailable", "seconds": "10"},
        {"target": "store", "kind": "unavailable", "probability": 0},
        {"target": "store", "kind": "unavailable", "probability": 1.5},
        {"target": "store", "kind": "unavailable", "probability": True},
        {"target": "store", "kind": "unavailable", "status": 500},  # not a field of this kind
    ],
)
def test_bad_specs_are_invalid_requests(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse(body)
