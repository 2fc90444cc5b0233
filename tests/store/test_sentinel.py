"""Which Sentinel events fence token operations (the pure part of server.store.sentinel)."""

from __future__ import annotations

from server.store.sentinel import aborted, promoted


def test_switch_master_names_the_new_master() -> None:
    assert promoted("mymaster", "+switch-master", "mymaster 127.0.0.1 6379 127.0.0.1 6380") == (
        "127.0.0.1",
        6380,
    )


def test_promoted_slave_names_the_promoted_replica() -> None:
    data = "slave 127.0.0.1:47729 127.0.0.1 47729 @ mymaster 127.0.0.1 34203"
    assert promoted("mymaster", "+promoted-slave", data) == ("127.0.0.1", 47729)


def test_the_selected_replica_fences_before_its_promotion() -> None:
    data = "slave 127.0.0.1:47729 127.0.0.1 47729 @ mymaster 127.0.0.1 34203"
    assert promoted("mymaster", "+selected-slave", data) == ("127.0.0.1", 47729)


def test_aborts_lift_the_fence_for_their_service_only() -> None:
    assert aborted("mymaster", "-failover-abort-no-good-slave", "master mymaster 127.0.0.1 6379")
    assert not aborted("mymaster", "-failover-abort-no-good-slave", "master other 127.0.0.1 6379")
    assert not aborted("mymaster", "+sdown", "master mymaster 127.0.0.1 6379")


def test_other_services_and_events_are_ignored() -> None:
    assert promoted("mymaster", "+switch-master", "other 127.0.0.1 6379 127.0.0.1 6380") is None
    assert promoted("mymaster", "+sdown", "master mymaster 127.0.0.1 6379") is None
    assert promoted("mymaster", "+promoted-slave", "garbage") is None
