"""Displacing an agent: ``DELETE /api/sdk/agents/{slug}`` takes it offline on whichever node
holds its ``/client`` socket.

The node that answers the request looks the agent up in the store. If the socket is here, the
agent comes off it at once. If it is on another node, a ``displace`` message on the relay's
broadcast channel names the agent and its owner; the owner node takes it off its socket the
same way, and the answering node waits (up to ``WAIT_SECONDS``) to see the record gone. An
owner that does not act in time (dead, or its bus subscription down) has its record taken out
of the store by the answering node instead: the agent is offline for every mint either way.

Taking an agent off its socket: the socket gets ``{"event": "error", "code": "AGENT_DISPLACED",
"agent_id"}``, the agent's live sessions end as when its socket closes, and the socket stays
open with its other agents (closing it would make the SDK reconnect and register everything
again at once). A registration waiting behind it with ``AGENT_IN_USE`` takes over on the next
heartbeat, which is what displacing a stale session is for.
"""

from __future__ import annotations

import asyncio
import logging

from server.core.wire import error_frame
from server.services.node import Node
from server.store.base import AgentRecord, agent_key

log = logging.getLogger("voice.agents")
KIND = "displace"  # the relay invalidation kind; key = "<owner>\n<org>/<agent>"
WAIT_SECONDS = 2.0
POLL_SECONDS = 0.05
FRAME_CODE = "AGENT_DISPLACED"


def install(node: Node) -> None:
    """Act on ``displace`` messages from every node (called once, at start-up)."""

    async def on_message(kind: str, key: str) -> None:
        if kind == KIND:
            owner, _, named = key.partition("\n")
            org_id, _, agent_id = named.partition("/")
            await displace_here(node, org_id, agent_id, owner)

    node.relay.on_invalidate.append(on_message)


async def displace_here(node: Node, org_id: str, agent_id: str, owner: str) -> AgentRecord | None:
    """Take the agent off its socket if this node holds it for ``owner``; the record, or None."""
    entry = node.registry.release_local(org_id, agent_id, owner)
    if entry is None:
        return None
    connection, record = entry
    await node.registry.release(record)
    for hook in node.on_agent_offline:
        await hook(record)
    detail = f"Agent '{agent_id}' was displaced by a DELETE /api/sdk/agents request; it is offline"
    await connection.send(error_frame(detail, FRAME_CODE, agent_id=agent_id))
    log.info("agent %s/%s displaced (owner %s)", org_id, agent_id, owner)
    return record


async def displace(node: Node, org_id: str, agent_id: str) -> bool:
    """Take ``org_id``'s agent offline wherever it is; False when it is online nowhere."""
    record = await node.store.get_agent(org_id, agent_id)
    if record is None:
        return False
    if await displace_here(node, org_id, agent_id, record.owner) is None:
        await node.relay.invalidate(KIND, record.owner + "\n" + agent_key(org_id, agent_id))
        if not await _gone(node, record):
            log.warning("agent %s/%s: owner %s did not let go; releasing it", org_id, agent_id, record.owner)
            await node.registry.release(record)
    node.registry.forget_cached(agent_key(org_id, agent_id))
    return True


async def _gone(node: Node, record: AgentRecord) -> bool:
    """Whether ``record``'s owner let the agent go within ``WAIT_SECONDS``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while loop.time() < deadline:
        current = await node.store.get_agent(record.org_id, record.agent_id)
        if current is None or current.owner != record.owner:
            return True
        await asyncio.sleep(POLL_SECONDS)
    return False
