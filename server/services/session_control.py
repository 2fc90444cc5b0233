"""The agent's control of one live session: ``session.configure``, ``session.pause`` /
``session.resume`` and ``session.send`` (pinecall/sdk src/domain/agent.ts ``configureSession``,
``pause``, ``resume``, ``sendMessage``).

The /client side names the session (``session_id``: its call id or its ``sess_`` id) and
delivers the command like any call command, so it reaches a session relayed to another node
too; here the session applies it and acknowledges with the frames the SDK's SessionHandler
reads (``session.configured``, ``session.paused``, ``session.resumed``, ``session.sent``, each
with the ``session_id`` as sent).

Paused (the SDK's human takeover, docs/guides/human-takeover.md): what the user says still
reaches the agent, marked ``paused: true``, so a human can read it; the agent's automatic
output (``bot.reply``, ``bot.reply.stream``) is held back and answered ``SESSION_PAUSED``;
``session.send`` (the human operator's message) is delivered as the agent's words whatever the
state, and kept in the session's history.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from server.core.wire import error_frame

if TYPE_CHECKING:
    from server.services.sessions import Session

CONTROL_EVENTS = frozenset({"session.configure", "session.pause", "session.resume", "session.send"})
# What an agent says on its own; held back while the session is paused.
AUTOMATIC_OUTPUT = frozenset({"bot.reply", "bot.reply.stream"})
# User input marked ``paused: true`` while paused.
USER_INPUT = frozenset({"user.message", "chat.message"})
# session.configure: the frame's fields that are addressing, not configuration.
_NOT_CONFIG = frozenset({"event", "agent_id", "session_id", "call_id", "contact", "request_id"})
MAX_SEND_CHARS = 4000
_ACKS = {
    "session.configure": "session.configured",
    "session.pause": "session.paused",
    "session.resume": "session.resumed",
    "session.send": "session.sent",
}


def held_back(session: Session, frame: Mapping[str, Any]) -> bool:
    """Whether ``frame`` from the agent is automatic output of a paused session."""
    return session.paused and frame.get("event") in AUTOMATIC_OUTPUT


def mark_paused(session: Session, frame: Mapping[str, Any]) -> Mapping[str, Any]:
    """User input to the agent carries ``paused: true`` while the session is paused."""
    if session.paused and frame.get("event") in USER_INPUT:
        return {**frame, "paused": True}
    return frame


async def control(session: Session, frame: Mapping[str, Any]) -> None:
    """Apply one control command to ``session`` and acknowledge it to the agent."""
    name = str(frame.get("event"))
    ack: dict[str, Any] = {"event": _ACKS[name], "session_id": frame.get("session_id") or session.call_id}
    if name == "session.pause":
        session.paused = True
    elif name == "session.resume":
        session.paused = False
    elif name == "session.configure":
        changes = {k: v for k, v in frame.items() if k not in _NOT_CONFIG}
        session.session_config.update(changes)
        await session.reconfigure(changes)
    else:
        text = frame.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SEND_CHARS:
            await session.send_to_agent(
                error_frame(
                    f"session.send needs 'text', a non-empty string of at most {MAX_SEND_CHARS} characters",
                    "BAD_REQUEST",
                    session_id=ack["session_id"],
                )
            )
            return
        message_id = "human_" + secrets.token_hex(8)
        ack["message_id"] = message_id
        # As the agent's own words (spoken or streamed, confirmed, kept in the history), but
        # past the pause: this is the human operator speaking.
        await session.handle_command({"event": "bot.reply", "text": text.strip(), "message_id": message_id})
    await session.send_to_agent(ack)


async def refuse_paused(session: Session, frame: Mapping[str, Any]) -> None:
    await session.send_to_agent(
        error_frame(
            "This session is paused (agent.pause): the agent's replies are held back until "
            "agent.resume; agent.sendMessage speaks as the human operator",
            "SESSION_PAUSED",
            message_id=frame.get("message_id") if isinstance(frame.get("message_id"), str) else None,
        )
    )
