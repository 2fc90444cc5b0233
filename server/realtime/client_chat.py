"""``llm.chat`` over ``/client``: the SDK's ChatClient (pinecall/sdk src/api/chat-client.ts, used
by ``pinecall chat`` and ``pinecall test``) talks text to a live agent of its org.

``{event: "llm.chat", session_id, agent_id, text}`` is one user turn. The first one for a
``session_id`` opens a chat session with the agent exactly as a browser's ``/chat/ws`` does (a
:class:`~server.realtime.chat_ws.ChatSession`: the agent gets ``llm.chat.started`` and
``chat.message``, its ``bot.reply`` / ``bot.reply.stream`` answer; history, pause, reply timeout
and limits as there), with the ChatClient's socket standing in for the browser's. What the
browser would get is translated into the events ChatClient reads: ``llm.chat.started {model}``
per turn, ``llm.chat.token {token, text}``, ``llm.chat.done {text, model}``, ``llm.chat.error
{error}``. There is no model here: ``model`` is ``"mock"`` and the agent's code (or the mock
agent) writes the reply. The session ends when that socket closes (``client_closed``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, cast

from starlette.websockets import WebSocket, WebSocketState

from server.core.slugs import agent_slug
from server.core.tokens import Channel, Claims
from server.core.wire import Frame, text_field
from server.errors import CapacityExceeded, VoiceError
from server.realtime.chat_ws import MAX_TEXT_CHARS, ChatSession
from server.services.agents import AgentConnection
from server.services.history import LocalHistory, Memory
from server.services.node import Node

MODEL = "mock"
MAX_CHATS_PER_CONNECTION = 64


class _ClientSide:
    """What a :class:`ChatSession` writes to its browser, as ChatClient events on a /client socket."""

    application_state = WebSocketState.CONNECTED

    def __init__(self, connection: AgentConnection, session_id: str) -> None:
        self.connection = connection
        self.session_id = session_id

    async def send_json(self, frame: Mapping[str, Any]) -> None:
        name, sid = frame.get("event"), self.session_id
        if name == "chat.token":
            out = {
                "event": "llm.chat.token",
                "session_id": sid,
                "token": frame.get("token"),
                "text": frame.get("text"),
            }
        elif name == "chat.done":
            out = {"event": "llm.chat.done", "session_id": sid, "text": frame.get("text"), "model": MODEL}
        elif name == "chat.error":
            out = {
                "event": "llm.chat.error",
                "session_id": sid,
                "error": frame.get("error"),
                "code": frame.get("code"),
            }
        else:
            return  # chat.connected, chat.history, pong: nothing ChatClient reads
        await self.connection.send(out)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED


class ClientChats:
    """The ChatClient sessions of one /client connection, by ``session_id``."""

    def __init__(self, node: Node, connection: AgentConnection) -> None:
        self.node = node
        self.connection = connection
        self.sessions: dict[str, ChatSession] = {}

    async def turn(self, frame: Frame) -> None:
        session_id = text_field(frame, "session_id", max_length=128)
        assert session_id is not None
        try:
            session = self.sessions.get(session_id)
            if session is None or session.end_reason is not None:
                session = await self._open(session_id, frame)
            await self.connection.send(
                {"event": "llm.chat.started", "session_id": session_id, "model": MODEL}
            )
            text = text_field(frame, "text", max_length=MAX_TEXT_CHARS)
            await session.on_browser({"event": "message", "text": text})
        except VoiceError as exc:
            await self.connection.send(
                {
                    "event": "llm.chat.error",
                    "session_id": session_id,
                    "error": exc.detail,
                    "code": exc.code,
                }
            )

    async def _open(self, session_id: str, frame: Frame) -> ChatSession:
        slug = agent_slug(frame.get("agent_id"))
        self.sessions = {k: s for k, s in self.sessions.items() if s.end_reason is None}
        if len(self.sessions) >= MAX_CHATS_PER_CONNECTION:
            raise CapacityExceeded(f"at most {MAX_CHATS_PER_CONNECTION} llm.chat sessions per connection")
        org_id = self.connection.org_id
        await self.node.registry.find(org_id, slug, shown_as=str(frame.get("agent_id")))  # AgentNotOnline
        now = time.time()
        claims = Claims("llmchat_" + secrets.token_hex(8), org_id, (slug,), Channel.CHAT, now, now)
        side = _ClientSide(self.connection, session_id)
        session = ChatSession(
            cast(WebSocket, side),  # ChatSession uses only send_json, close and application_state
            claims,
            None,
            Memory(LocalHistory()),
            self.node.settings.chat_reply_seconds,
        )
        with self.node.sessions.admitting(org_id, slug):
            await self.node.sessions.start(session)
        session.open()
        self.sessions[session_id] = session
        return session

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.end("client_closed")
        self.sessions.clear()
