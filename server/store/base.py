"""The store interfaces: what every node shares (CONTRACT §8).

Each concern is a ``Protocol`` with two implementations, :mod:`server.store.memory` (one
process, the zero-config default) and :mod:`server.store.redis` (every node of a
deployment). :func:`server.store.open_store` picks one from ``VOICE_STORE_URL``. The same test
suite (``tests/store``) runs against both.

Every operation that decides something (single use, rate counting, agent ownership) is one
atomic store operation. Every Redis failure surfaces as :class:`server.errors.StoreUnavailable`:
the store fails closed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

from server.core.apikeys import ApiKey
from server.core.ratelimit import RateLimit, Verdict


class Hit(NamedTuple):  # per request: a NamedTuple is immutable and ~2x cheaper to build
    """One rate-limit counter to increment (``key`` names the bucket)."""

    key: str
    limit: RateLimit


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An online agent: who holds it (one /client socket on one node) and how to reach it."""

    org_id: str
    agent_id: str
    owner: str  # "<node_id>/<connection id>"
    node_id: str
    node_url: str
    allowed_origins: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    # "<type>:<ref>" -> the channel.add frame as sent (WhatsApp credentials included)
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    registered_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> AgentRecord:
        data = json.loads(raw)
        data["allowed_origins"] = tuple(data.get("allowed_origins", ()))
        return cls(**data)


def agent_key(org_id: str, agent_id: str) -> str:
    return f"{org_id}/{agent_id}"


class TokenStore(Protocol):
    async def issue_token(self, jti: str, ttl: float, hits: Sequence[Hit]) -> Verdict:
        """Count ``hits``; if all are within their limits, store ``jti`` for ``ttl`` seconds.

        Returns the verdict of the first refusing limit (the token is then not stored), else
        an allowing verdict. One round trip on Redis.
        """
        ...

    async def consume_token(self, jti: str) -> bool:
        """Atomically remove ``jti``: True for exactly one caller, False for every other."""
        ...

    async def hit(self, hits: Sequence[Hit]) -> Verdict:
        """Count ``hits`` with no token attached."""
        ...


class KeyStore(Protocol):
    async def put_key(self, key: ApiKey, digest: str) -> None: ...

    async def key_by_digest(self, digest: str) -> ApiKey | None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None:
        """Set the key's ``revoked_at`` to ``at`` unless it is already earlier (a future ``at``
        is a rotation's grace); the key as stored, or None when unknown."""
        ...

    async def touch_key(self, key_id: str, at: float) -> None:
        """Record a use (best effort: the caller throttles how often)."""
        ...


class AgentStore(Protocol):
    async def claim_agent(self, record: AgentRecord, ttl: float, replace: str | None = None) -> str | None:
        """Store ``record`` unless another owner holds the agent; return that owner, or None.

        ``replace`` names a holder known to be stale: it is overwritten (compare-and-swap)."""
        ...

    async def get_agent(self, org_id: str, agent_id: str) -> AgentRecord | None: ...

    async def release_agent(self, org_id: str, agent_id: str, owner: str) -> None:
        """Remove the agent (and its indexes) if ``owner`` still holds it."""
        ...

    async def refresh_agent(self, record: AgentRecord, ttl: float) -> bool:
        """Extend the lifetime of an agent (not its indexes: ``claim_name`` extends those);
        False when ``owner`` lost it."""
        ...

    async def claim_name(self, name: str, value: str, ttl: float) -> str | None:
        """Point the index ``name`` at ``value`` unless it points elsewhere; return that value."""
        ...

    # The heartbeat's batches: each is the single-record operation applied to every item in
    # order, each item atomic on its own (never the batch as a whole), in one round trip on
    # Redis (one per shard on a cluster) instead of one per item. The caller bounds the batch.
    async def refresh_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[bool]:
        """``refresh_agent`` for each record: True where it was extended, False where lost."""
        ...

    async def claim_agents(self, records: Sequence[AgentRecord], ttl: float) -> list[str | None]:
        """``claim_agent`` for each record: None where stored, else the other owner holding it."""
        ...

    async def claim_names(self, claims: Sequence[tuple[str, str]], ttl: float) -> list[str | None]:
        """``claim_name`` for each ``(name, value)``: None where claimed, else the other value."""
        ...

    async def lookup_name(self, name: str) -> str | None: ...

    async def release_name(self, name: str, value: str) -> None: ...

    async def touch_indexes(self, touches: Sequence[tuple[str, str, int]], ttl: float) -> list[list[str]]:
        """``MessageStore.touch_index`` for each ``(index, member, cap)``, in order, each atomic
        on its own, in one round trip on Redis (the heartbeat's batch, like ``claim_names``)."""
        ...

    async def index_members(self, index: str, ttl: float) -> list[str]:
        """The members of ``index`` written within the last ``ttl`` seconds, oldest first."""
        ...


class MessageStore(Protocol):
    async def first_time(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` (webhook redelivery dedupe)."""
        ...

    async def append(self, key: str, item: str, max_items: int, ttl: float, max_bytes: int = 0) -> int:
        """Append to a list bounded to ``max_items`` (and ``max_bytes`` of UTF-8 when > 0; the
        oldest go first, the newest item always stays) that expires ``ttl`` after its last write.
        Returns how many items it holds."""
        ...

    async def touch_index(self, index: str, member: str, cap: int, ttl: float) -> list[str]:
        """Note a write to ``member`` in ``index``, which keeps the ``cap`` most recently written
        members of the last ``ttl`` seconds; returns the members pushed out, oldest first."""
        ...

    async def read_list(self, key: str) -> list[str]: ...

    async def pop_list(self, key: str) -> list[str]:
        """Read and delete a list atomically."""
        ...


class EventPage(NamedTuple):
    """A read of an event log: ``entries`` after the cursor, oldest first, and the bounds of what
    the log holds (``first`` = oldest kept number, ``last`` = newest given; 0 for an empty log)."""

    entries: list[tuple[int, str]]
    first: int
    last: int


class EventStore(Protocol):
    async def log_events(self, log: str, entries: Sequence[str], max_items: int, ttl: float) -> list[int]:
        """Append ``entries`` to the log ``log`` in order, each under the next number of that log
        (1, 2, 3...; never given twice while the log lives, whichever node appends), keeping the
        newest ``max_items``; the log expires ``ttl`` after its last write. Returns the numbers."""
        ...

    async def read_events(self, log: str, after: int, limit: int) -> EventPage:
        """Up to ``limit`` entries numbered above ``after`` (none when ``limit`` is 0)."""
        ...


class Bus(Protocol):
    async def publish(self, channel: str, message: str) -> int:
        """Send to every subscriber of ``channel`` on any node; returns how many got it."""
        ...

    def subscribe(self, channel: str) -> AsyncIterator[str]:
        """Messages published to ``channel`` from now on, until the iterator is closed."""
        ...


# What ``POST /_voice/reset`` can clear: each family is the keys that start with these prefixes
# (the same names on both backends; on Redis after the store's own prefix). API keys are no family:
# configuration survives every reset.
FAMILIES: dict[str, tuple[str, ...]] = {
    "tokens": ("tok:",),  # issued and not yet consumed (consuming deletes the key: no marker)
    "sessions": ("ix:call:",),  # the call index that relays agents' commands to sessions
    "journal": ("ev:_voice/journal",),
    "timelines": ("ev:_voice/tl/",),
    "rate_limits": ("rl:",),
    "whatsapp": ("seen:wa:", "ls:wa:q:"),  # webhook dedupe, queues for offline numbers
    "chat_threads": ("ls:chat:", "lx:th:"),
    "faults": ("v:_voice/faults",),
    "agents": ("ag:",),  # only with {"agents": true}
}


class InspectStore(Protocol):
    """What the inspection API (``/_voice/``) needs besides the rest."""

    async def clear(self, families: Sequence[str]) -> int:
        """Delete every key of each of ``families`` (names of :data:`FAMILIES`); how many went.
        Each family goes in one atomic step where the backend allows (one Lua SCAN+UNLINK on Redis)."""
        ...

    async def get_value(self, key: str) -> str | None: ...

    async def set_value(self, key: str, value: str | None, ttl: float | None = None) -> None:
        """Set (None: delete) a small shared value, e.g. the test clock's offset."""
        ...


class Store(TokenStore, KeyStore, AgentStore, MessageStore, EventStore, InspectStore, Bus, Protocol):
    """Everything a node needs from the shared store."""

    url: str

    async def start(self) -> None:
        """Start background work (the Sentinel failover watch); called once by the node."""
        ...

    async def ping(self) -> float:
        """Round-trip time in seconds; raises StoreUnavailable."""
        ...

    def observe_round_trips(self, observe: Callable[[float], None]) -> None:
        """Report the seconds of each token-path round trip (a batch of mints and consumes) to
        ``observe``; a store without round trips reports nothing."""
        ...

    async def aclose(self) -> None: ...
