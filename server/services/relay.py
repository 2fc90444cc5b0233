"""Cross-node delivery over the store's bus (CONTRACT §8).

Each node subscribes to its own channel ``node:<node_id>`` and to the broadcast channel
``invalidate``. A session whose agent's /client socket is on another node still works:

* session → agent: the frame is published to the owner node, which writes it to the socket;
* agent → session: the command names a ``call_id``; the call index ``call:<id>`` in the store
  says which node holds that session, and the command is published there.

If the owner is gone (nobody subscribed), delivery reports False and the caller refuses
cleanly. Invalidation messages drop node-local cache entries (API keys, agent records) on
every node at once; the caches' own TTL bounds staleness if a message is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from server.errors import StoreUnavailable
from server.store.base import Store

log = logging.getLogger("voice.relay")
STOP_SECONDS = 2.0
INVALIDATE = "invalidate"  # also written by KeyService (which the CLI uses without a relay)
Invalidation = Callable[[str, str], Awaitable[None] | None]  # (kind, key)
AgentSink = Callable[[str, str, Mapping[str, Any]], Awaitable[bool]]  # (org, agent, frame)
CallSink = Callable[[str, str, Mapping[str, Any]], Awaitable[bool]]  # (org, call_id, frame)


def call_name(call_id: str) -> str:
    return "call:" + call_id


class Relay:
    def __init__(self, store: Store, node_id: str) -> None:
        self._store = store
        self.node_id = node_id
        self._tasks: list[asyncio.Task[None]] = []
        self.agent_sink: AgentSink | None = None  # writes to a local agent socket
        self.call_sink: CallSink | None = None  # hands a command to a local session
        self.on_invalidate: list[Invalidation] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen("node:" + self.node_id, self._deliver), name="relay-node"),
            asyncio.create_task(self._listen(INVALIDATE, self._invalidated), name="relay-invalidate"),
        ]

    def listen(self, channel: str, handle: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Hand every JSON message on ``channel`` to ``handle`` until :meth:`stop`, resubscribing
        like the relay's own channels."""
        self._tasks.append(asyncio.create_task(self._listen(channel, handle), name=f"relay-{channel}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            return
        # Bounded: a Redis pub/sub read cancelled right after subscribing can swallow the cancel
        # (seen as a node that never exited after SIGTERM); the process is exiting anyway.
        _, stuck = await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
        if stuck:
            log.warning("relay tasks did not stop in %ss: %s", STOP_SECONDS, [t.get_name() for t in stuck])

    async def _listen(self, channel: str, handle: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Subscribe, and subscribe again with backoff whenever the store connection drops."""
        delay = 0.1
        while True:
            try:
                async for raw in self._store.subscribe(channel):
                    delay = 0.1
                    try:
                        await handle(json.loads(raw))
                    except Exception:
                        log.exception("relay message on %s failed", channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A store outage is reported once, by the node's presence beat; not per retry here.
                level = logging.DEBUG if isinstance(exc, StoreUnavailable) else logging.WARNING
                log.log(
                    level,
                    "relay subscription %s lost (%s); retrying in %.1fs",
                    channel,
                    type(exc).__name__,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- sending ---------------------------------------------------------------------------
    async def to_agent(self, node_id: str, org_id: str, agent_id: str, frame: Mapping[str, Any]) -> bool:
        """Deliver ``frame`` to an agent whose socket is on ``node_id``."""
        message = {"t": "agent", "org": org_id, "agent": agent_id, "frame": dict(frame)}
        return await self._store.publish("node:" + node_id, json.dumps(message)) > 0

    async def to_call(self, org_id: str, call_id: str, frame: Mapping[str, Any]) -> bool:
        """Deliver an agent's command to the node that holds ``call_id``."""
        node_id = await self._store.lookup_name(call_name(call_id))
        if node_id is None or node_id == self.node_id:
            return False
        message = {"t": "call", "org": org_id, "call": call_id, "frame": dict(frame)}
        return await self._store.publish("node:" + node_id, json.dumps(message)) > 0

    async def to_call_on(self, node_id: str, org_id: str, call_id: str, frame: Mapping[str, Any]) -> bool:
        """Deliver a command to ``call_id`` on ``node_id`` (a session beside its agent has no index)."""
        message = {"t": "call", "org": org_id, "call": call_id, "frame": dict(frame)}
        return await self._store.publish("node:" + node_id, json.dumps(message)) > 0

    async def claim_call(self, call_id: str, ttl: float) -> None:
        await self._store.claim_name(call_name(call_id), self.node_id, ttl)

    async def release_call(self, call_id: str) -> None:
        await self._store.release_name(call_name(call_id), self.node_id)

    async def invalidate(self, kind: str, key: str) -> None:
        await self._store.publish(INVALIDATE, json.dumps({"kind": kind, "key": key}))

    # -- receiving -------------------------------------------------------------------------
    async def _deliver(self, message: dict[str, Any]) -> None:
        frame = message.get("frame")
        if not isinstance(frame, dict):
            return
        if message.get("t") == "agent" and self.agent_sink is not None:
            await self.agent_sink(str(message["org"]), str(message["agent"]), frame)
        elif message.get("t") == "call" and self.call_sink is not None:
            await self.call_sink(str(message["org"]), str(message["call"]), frame)

    async def _invalidated(self, message: dict[str, Any]) -> None:
        kind, key = str(message.get("kind")), str(message.get("key"))
        for hook in self.on_invalidate:
            result = hook(kind, key)
            if result is not None:
                await result
