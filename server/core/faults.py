"""Injected faults (``POST /_voice/faults``): what a fault is, and when it applies. Pure: no I/O.

A fault names a ``target`` and a ``kind`` (:data:`KINDS`), the parameters of that kind, and how
long it lasts: ``count`` applications, ``seconds``, or both (whichever ends first); with neither it
lasts :data:`DEFAULT_SECONDS`, so every fault ends by itself. ``probability`` (0 < p <= 1) makes it
apply to that share of the matching operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from server.errors import InvalidRequest

DEFAULT_SECONDS = 60.0
MAX_SECONDS = 86400.0
MAX_COUNT = 1_000_000
MAX_DELAY_MS = 60_000
CHANNELS = ("webrtc", "chat", "stream")
_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")

# (target, kind) -> {parameter: required}
KINDS: dict[tuple[str, str], dict[str, bool]] = {
    ("store", "unavailable"): {},
    ("store", "slow"): {"delay_ms": True},
    ("mint", "fail"): {"channel": False, "agent_id": False, "status": True, "code": True},
    ("consume", "fail"): {"channel": False, "status": True, "code": True},
    ("client", "drop"): {"agent_id": True},
    ("whatsapp", "delay"): {"delay_ms": True},
    ("whatsapp", "fail"): {"status": True},
}
_LIFETIME = ("count", "seconds", "probability")


@dataclass(frozen=True, slots=True)
class Fault:
    id: str
    target: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    remaining: int | None = None  # applications left; None: no count
    expires_at: float | None = None  # unix seconds; None: no time limit (a count is set)
    probability: float = 1.0
    applied: int = 0

    def live(self, now: float) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.expires_at is None or now < self.expires_at
        )

    def matches(self, target: str, now: float, context: Mapping[str, str | None]) -> bool:
        """Whether this fault covers an operation on ``target`` with ``context`` (channel, agent)."""
        if self.target != target or not self.live(now):
            return False
        for name in ("channel", "agent_id"):
            wanted = self.params.get(name)
            if wanted is not None and context.get(name) != wanted:
                return False
        return True

    def apply(self) -> Fault:
        """This fault once it has applied one more time."""
        remaining = None if self.remaining is None else self.remaining - 1
        return replace(self, remaining=remaining, applied=self.applied + 1)

    def to_item(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "params": dict(self.params),
            **dict(self.params),
            "probability": self.probability,
            "remaining": self.remaining,
            "expires_at": self.expires_at,
            "applied": self.applied,
        }

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Fault:
        return cls(
            id=str(item["id"]),
            target=str(item["target"]),
            kind=str(item["kind"]),
            params=dict(item.get("params") or {}),
            remaining=item.get("remaining"),
            expires_at=item.get("expires_at"),
            probability=float(item.get("probability", 1.0)),
            applied=int(item.get("applied", 0)),
        )


def parse_fault(body: Mapping[str, Any], now: float, new_id: Callable[[], str]) -> Fault:
    """A fault from the body of ``POST /_voice/faults``; InvalidRequest naming what is wrong."""
    target, kind = body.get("target"), body.get("kind")
    if not isinstance(target, str) or not isinstance(kind, str) or (target, kind) not in KINDS:
        known = ", ".join(f"{t}/{k}" for t, k in KINDS)
        raise InvalidRequest(f"target/kind must be one of {known}")
    spec = KINDS[(target, kind)]
    unknown = sorted(set(body) - {"target", "kind", *spec, *_LIFETIME})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} for {target}/{kind}")
    params: dict[str, Any] = {}
    for name, required in spec.items():
        if name not in body or body[name] is None:
            if required:
                raise InvalidRequest(f"{target}/{kind} needs {name}")
            continue
        params[name] = _param(name, body[name])
    count = _number(body, "count", int, 1, MAX_COUNT)
    seconds = _number(body, "seconds", float, 0.001, MAX_SECONDS)
    probability = _number(body, "probability", float, 0.0, 1.0)
    if probability is not None and probability <= 0:
        raise InvalidRequest("probability must be > 0 and <= 1")
    if count is None and seconds is None:
        seconds = DEFAULT_SECONDS
    return Fault(
        id=new_id(),
        target=target,
        kind=kind,
        params=params,
        remaining=int(count) if count is not None else None,
        expires_at=round(now + seconds, 3) if seconds is not None else None,
        probability=float(probability) if probability is not None else 1.0,
    )


def _param(name: str, value: Any) -> Any:
    if name == "status":
        if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
            raise InvalidRequest("status must be an HTTP error status, 400 to 599")
        return value
    if name == "delay_ms":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DELAY_MS:
            raise InvalidRequest(f"delay_ms must be a whole number from 1 to {MAX_DELAY_MS}")
        return value
    if name == "code":
        if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _CODE_CHARS:
            raise InvalidRequest("code must be 1-64 characters of a-z, 0-9 and _")
        return value
    if name == "channel":
        if value not in CHANNELS:
            raise InvalidRequest(f"channel must be one of {', '.join(CHANNELS)}")
        return value
    if not isinstance(value, str) or not 1 <= len(value) <= 128:  # agent_id
        raise InvalidRequest(f"{name} must be a string of 1-128 characters")
    return value


def _number(body: Mapping[str, Any], name: str, kind: type, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number")
    if kind is int and not float(value).is_integer():
        raise InvalidRequest(f"{name} must be a whole number")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low:g} to {high:g}")
    return float(value)
