"""The inspection API's actions on the whole deployment: reset and the test clock.

Reset: the store clears its families (:data:`server.store.base.FAMILIES`, one Lua SCAN+UNLINK per
family on Redis), then a ``_voice/reset`` notice on the relay makes every node, this one first,
end its live sessions with reason ``reset`` and drop what it holds locally (unwritten journal
entries, cached agent records; with ``agents`` its ``/client`` sockets, whose agents then go
offline).

Clock: the offset lives in the store (``_voice/clock``) and a ``_voice/clock`` notice tells every
node to read it again; a node that starts later reads it at start-up. The node's two
:class:`~server.core.clock.ShiftedClock` take it, which moves token expiry and the session idle
and maximum timers. Rate-limit windows are kept by the store's own clock (Redis key expiry), so
an advance ends every current window instead (the buckets are cleared): a test that advances past
a window sees a fresh one, as it would after waiting.
"""

from __future__ import annotations

import contextlib
import logging
import math

from server.errors import InvalidRequest, VoiceError
from server.services.faults import NOTICE as FAULTS_NOTICE
from server.services.node import Node
from server.store.base import FAMILIES

log = logging.getLogger("voice.inspect")
RESET = "_voice/reset"
CLOCK = "_voice/clock"
CLOCK_KEY = "_voice/clock"
MAX_OFFSET = 10 * 365 * 86400.0  # ten years
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f != "agents")


def install(node: Node) -> None:
    """Act on the notices of every node (called once, at start-up, with inspection on)."""

    async def on_notice(kind: str, key: str) -> None:
        if kind == RESET:
            origin, _, scope = key.partition("\n")
            if origin != node.settings.node_id:  # the asking node reset itself before the notice
                await reset_here(node, agents=scope == "agents")
        elif kind == CLOCK:
            await load_clock(node)
        elif kind == FAULTS_NOTICE and node.faults is not None:
            await node.faults.reload()

    node.relay.on_invalidate.append(on_notice)
    if node.faults is not None:
        node.faults.on_change.append(lambda faults: drop_clients(node))


async def drop_clients(node: Node) -> None:
    """``client/drop``: close the ``/client`` socket here that holds a faulted agent (its agents
    go offline, as when a network drops it; the SDK reconnects)."""
    board = node.faults
    if board is None or not any(f.target == "client" for f in board.active):
        return
    for connection in list(node.connections):
        held = [
            r.agent_id
            for r in node.registry.local_agents()
            if node.registry.local_connection(r.org_id, r.agent_id) is connection
        ]
        if any(board.check("client", agent_id=agent_id) is not None for agent_id in held):
            await node.connection_closed(connection)
            await connection.close(1011, "fault injected")


async def reset(node: Node, agents: bool) -> list[str]:
    """Clear the deployment's state; the families cleared."""
    families = [*DEFAULT_FAMILIES, "agents"] if agents else list(DEFAULT_FAMILIES)
    if node.journal is not None:
        node.journal.discard_pending()
    await node.store.clear(families)
    await reset_here(node, agents)
    with contextlib.suppress(VoiceError):  # the other nodes; this one is done
        await node.relay.invalidate(RESET, node.settings.node_id + ("\nagents" if agents else "\n"))
    return families


async def reset_here(node: Node, agents: bool) -> None:
    """What one node holds: live sessions end (reason ``reset``), unwritten entries go."""
    if node.journal is not None:
        node.journal.discard_pending()
    if node.faults is not None:
        await node.faults.reload()
    for session in node.sessions.live():
        await session.end("reset")
    conversations = node.whatsapp.conversations
    for conversation in conversations.live():
        await conversations.end(conversation, "reset")
    if agents:
        for connection in list(node.connections):
            for record in await node.connection_closed(connection):
                node.registry.forget_cached(f"{record.org_id}/{record.agent_id}")
            await connection.close(1012, "reset")
        if node.settings.mock_agent:  # built in, like configuration: back at once (on one node)
            if node.mock_agent is not None:
                await node.mock_agent.stop()
            node.mock_agent = await node.start_mock_agent()


def parse_clock(body: dict[str, object]) -> float | None:
    """The new offset asked for: ``advance_seconds`` (added), ``reset`` (0); None for a read."""
    unknown = sorted(set(body) - {"advance_seconds", "reset"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; expected advance_seconds or reset")
    if "advance_seconds" in body and "reset" in body:
        raise InvalidRequest("give advance_seconds or reset, not both")
    if "reset" in body:
        if body["reset"] is not True:
            raise InvalidRequest("reset must be true")
        return 0.0
    advance = body.get("advance_seconds")
    if isinstance(advance, bool) or not isinstance(advance, int | float) or not math.isfinite(advance):
        raise InvalidRequest("advance_seconds must be a number of seconds > 0")
    if not 0 < advance <= MAX_OFFSET:
        raise InvalidRequest(f"advance_seconds must be > 0 and <= {MAX_OFFSET:g}")
    return float(advance)


async def advance_clock(node: Node, advance: float) -> float:
    """Move the deployment's clock ``advance`` seconds on (0: back to real time); the offset."""
    current = await _stored_offset(node)
    offset = 0.0 if advance == 0 else current + advance
    if offset > MAX_OFFSET:
        raise InvalidRequest(f"the clock may run at most {MAX_OFFSET:g} seconds ahead")
    await node.store.set_value(CLOCK_KEY, repr(offset) if offset else None)
    if advance:
        await node.store.clear(["rate_limits"])
    _apply(node, offset)
    with contextlib.suppress(VoiceError):
        await node.relay.invalidate(CLOCK, repr(offset))
    return offset


async def load_clock(node: Node) -> None:
    """Take the deployment's offset from the store (start-up, and each ``_voice/clock`` notice)."""
    try:
        _apply(node, await _stored_offset(node))
    except VoiceError as exc:
        log.warning("could not read the test clock's offset: %s", exc.detail)


async def _stored_offset(node: Node) -> float:
    raw = await node.store.get_value(CLOCK_KEY)
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


def _apply(node: Node, offset: float) -> None:
    node.wall_clock.offset = offset
    node.mono_clock.offset = offset
