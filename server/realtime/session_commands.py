"""``/client`` session commands (``session.configure``, ``session.pause``, ``session.resume``,
``session.send``): find the live session the agent names and deliver the command to it, here
or relayed to its node (services/session_control.py applies it there and acknowledges).

``session_id`` is the session's call id (what the SDK's Call holds) or its ``sess_`` id from
``call.started``. ``pause``/``resume`` without one act on the whole agent: every session of it
on this node, and the ones it starts from then on. A ``contact`` names a WhatsApp contact,
whose conversations are not sessions here: refused with ``BAD_REQUEST``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.core.slugs import agent_slug
from server.core.wire import Frame, text_field
from server.errors import BadRequest, RegistrationError, SessionNotFound
from server.services.agents import AgentConnection
from server.services.node import Node


def _own_agent(node: Node, connection: AgentConnection, frame: Frame) -> tuple[str, str]:
    raw = text_field(frame, "agent_id", max_length=128)
    assert raw is not None
    slug = agent_slug(raw)
    if node.registry.local_connection(connection.org_id, slug) is not connection:
        raise RegistrationError(f"Agent '{raw}' is not registered on this connection")
    return slug, raw


def _call_id_of(node: Node, org_id: str, slug: str, session_id: str) -> str:
    """The call id ``session_id`` names: a call id, or a local session's ``sess_`` id."""
    for session in node.sessions.live():
        if session.org_id == org_id and session.agent_id == slug and session_id == session.session_id:
            return session.call_id
    return session_id


async def session_command(node: Node, connection: AgentConnection, frame: Frame) -> None:
    slug, raw = _own_agent(node, connection, frame)
    name = frame["event"]
    session_id = text_field(frame, "session_id", max_length=128, required=False)
    if session_id is None:
        if frame.get("contact") is not None:
            raise BadRequest(
                f"{name} by contact is for WhatsApp conversations, which this server does not pause; "
                "name the session (session_id)"
            )
        if name not in ("session.pause", "session.resume"):
            raise BadRequest(f"{name} needs 'session_id'")
        await _pause_agent(node, connection, slug, raw, paused=name == "session.pause")
        return
    call_id = _call_id_of(node, connection.org_id, slug, session_id)
    local = node.calls.get(call_id, connection.org_id)
    mine = local is None or local.agent_id == slug  # another agent's session is unknown to this one
    if mine and await node.deliver_command(connection.org_id, call_id, {**frame, "call_id": call_id}):
        return
    raise SessionNotFound(f"No live session '{session_id}' of agent '{raw}'")


async def _pause_agent(node: Node, connection: AgentConnection, slug: str, raw: str, paused: bool) -> None:
    key = (connection.org_id, slug)
    if paused:
        node.sessions.paused_agents.add(key)
    else:
        node.sessions.paused_agents.discard(key)
    for session in node.sessions.live():
        if (session.org_id, session.agent_id) == key:
            session.paused = paused
    ack: Mapping[str, Any] = {"event": "session.paused" if paused else "session.resumed", "agent_id": raw}
    await connection.send(ack)
