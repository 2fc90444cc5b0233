"""``WS /chat/ws?token=<cht_...>[&thread=<id>]``: a text chat between a browser and an agent
(CONTRACT §4, §6).

Admission, in this order, each refusal a close frame with code ``exc.ws_close_code`` and the
error ``code`` as reason (CONTRACT §4: a client without an ``Origin`` sees the close on its first
``recv``); a browser's socket (it always sends ``Origin``) first gets an ``error {error, code}``
frame, what the web client's ChatSession waits for: bad ``thread`` → ``bad_request``; forged,
expired or wrong-channel token (checked by arithmetic, nothing spent); no room → 1013
``at_capacity``; agent online on no node → ``agent_not_online``; only then the token is
consumed (``token_spent`` on a second use). A slot is reserved before the consume, so a refused
session never burns its token
(:mod:`server.services.admission`, shared with WebRTC).

Then ``chat.connected {session_id}`` first, ``chat.history`` when the thread has messages, and:

* browser ``message {text}`` → agent ``chat.message {call_id, text, message_id}``;
  browser ``set_context {key, value}`` → agent ``session.context {call_id, key, value}``;
* agent ``bot.reply`` → browser ``chat.token`` (cumulative ``text``, plus the ``token`` delta)
  in a few word-aligned chunks, then ``chat.done``; ``bot.reply.stream`` start/chunk/end the same.

The agent sees the session as the real SDK expects a chat: ``llm.chat.started`` (which the SDK
turns into a Call with transport "chat" and its ``chat.started`` event) and no ``call.started``
(that would create the Call twice and run the app's voice handler too); at the end
``call.ended {reason}`` and then ``llm.chat.ended``. Call ids start with ``chat-``: the SDK routes
chat tool calls only for those.

The browser blocks its input until a turn ends, so every user message ends in ``chat.done`` or
``chat.error`` (``reply_timeout`` after ``VOICE_CHAT_REPLY_SECONDS`` without a reply). A bad
frame gets ``chat.error {error, code}`` and the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.core.clientip import client_ip
from server.core.scopes import Access
from server.core.tokens import Channel, Claims
from server.core.wire import Frame, error_frame, parse_frame
from server.errors import BadRequest, TokenInvalid, VoiceError
from server.log import event
from server.services.admission import admit
from server.services.history import (
    HISTORY_COMMANDS,
    LocalHistory,
    Memory,
    Message,
    StoredHistory,
    thread_indexes,
    thread_key,
    valid_thread,
)
from server.services.node import Node
from server.services.sessions import Session, greeting_frame, greeting_of
from server.settings import Settings

log = logging.getLogger("voice.chat")
MAX_TEXT_CHARS = 4000  # one browser message
MAX_REPLY_CHARS = 64_000  # one agent reply, streamed or not
MAX_STREAMS = 8  # bot.reply.stream messages open at once
INBOX_SIZE = 256  # agent commands waiting for the browser
CHUNKS = 6  # chat.token frames per bot.reply
_WORD_START = re.compile(r"(?<=\s)(?=\S)")


def reply_chunks(text: str, parts: int = CHUNKS) -> list[str]:
    """Cumulative prefixes of ``text`` cut at word starts, at most ``parts``, the last = ``text``."""
    words = [w for w in _WORD_START.split(text) if w]
    if not words:
        return []
    size = -(-len(words) // parts)
    return ["".join(words[: end + size]) for end in range(0, len(words), size)]


def _message_id(frame: Mapping[str, Any]) -> str:
    value = frame.get("message_id")
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    return "msg_" + secrets.token_hex(8)


class ChatSession(Session):
    transport = "chat"
    call_prefix = "chat-"

    def __init__(
        self, websocket: WebSocket, claims: Claims, thread: str | None, memory: Memory, reply_seconds: float
    ) -> None:
        super().__init__(claims.org_id, claims.agent_id, claims.metadata)
        self.access = Access.of(claims)
        self.websocket = websocket
        self.thread = thread
        self.memory = memory
        self.reply_seconds = reply_seconds
        self._lock = asyncio.Lock()
        self._inbox: asyncio.Queue[Frame] = asyncio.Queue(INBOX_SIZE)
        self._pump: asyncio.Task[None] | None = None
        self._turn: asyncio.Task[None] | None = None  # a user message waiting for its reply
        self._turns = 0  # user messages so far: the turn_id of turn.end
        self._streams: dict[str, str] = {}
        self.greeting: str | None = None  # the agent config's, sent when the conversation is new

    # -- what the agent sees ---------------------------------------------------------------
    def started_frame(self) -> dict[str, Any]:
        return {
            "event": "llm.chat.started",
            "call_id": self.call_id,
            "session_id": self.session_id,
            "from": "chat",
            "to": self.agent_id,
            "direction": "inbound",
            "transport": self.transport,
            "metadata": self.metadata,
            "thread": self.thread,
            **self.scope_field(),
        }

    def ended_frames(self, reason: str, duration_seconds: float) -> list[dict[str, Any]]:
        # call.ended first: the SDK ends the Call on the first of the two, and this one has the reason.
        ended = {"event": "llm.chat.ended", "call_id": self.call_id, "reason": reason}
        return [*super().ended_frames(reason, duration_seconds), ended]

    # -- the browser side --------------------------------------------------------------------
    async def emit(self, frame: Mapping[str, Any]) -> None:
        self.trace("server->browser", frame)
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):  # a vanished browser is handled by the reader
                    await self.websocket.send_json(dict(frame))

    def open(self) -> None:
        """The browser has ``chat.connected``: agent commands may flow to it from now on."""
        self._pump = asyncio.create_task(self._run_pump(), name=f"chat-pump-{self.call_id}")

    async def on_browser(self, frame: Frame) -> None:
        name = frame["event"]
        if name != "ping":  # a keep-alive is not activity: idle means no user or agent content
            self.touch()
        if name == "message":
            self.access.check_input("a chat message")
            await self._user_message(frame.get("text"))
        elif name == "set_context":
            self.access.check_input("set_context")
            key = frame.get("key")
            if not isinstance(key, str) or not 0 < len(key) <= 128:
                raise BadRequest("set_context needs a 'key' of 1-128 characters")
            await self.send_to_agent({"event": "session.context", "key": key, "value": frame.get("value")})
        elif name == "ping":
            await self.emit({"event": "pong"})
        else:
            raise BadRequest(f"unknown event {name[:64]!r}; send 'message' or 'set_context'")

    async def _user_message(self, raw: object) -> None:
        if not isinstance(raw, str) or not raw.strip():
            raise BadRequest("'text' must be a non-empty string")
        text = raw.strip()
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(f"message is longer than {MAX_TEXT_CHARS} characters")
        if self._turn is not None:
            raise BadRequest("wait for the reply (chat.done) before sending the next message")
        message_id = "msg_" + secrets.token_hex(8)
        await self.memory.history.append([Message("user", text)])
        if not await self.send_to_agent({"event": "chat.message", "text": text, "message_id": message_id}):
            await self.end("agent_offline")
            return
        self._arm_turn()
        # The SDK's bring-your-own-LLM handler is agent.on("turn.end"). A chat message is a
        # finished turn at once (no detector, so no eager.turn); the SDK's chat path keeps no
        # turn state of its own, so turn.end names its text and message_id (pinecall/sdk
        # domain/call.ts _applyTurnEnd reads them before any tracked state).
        self._turns += 1
        turn = {"turn_id": self._turns, "message_id": message_id, "text": text}
        await self.send_to_agent({"event": "turn.end", **turn, "probability": 1.0, "latency_ms": 0})

    def _arm_turn(self) -> None:
        self._disarm_turn()
        if self.paused:  # a human answers a paused chat, whenever they do (session_control.py)
            return
        self._turn = asyncio.create_task(self._turn_timeout(), name=f"chat-turn-{self.call_id}")

    def _disarm_turn(self) -> None:
        if self._turn is not None and self._turn is not asyncio.current_task():
            self._turn.cancel()
        self._turn = None

    async def _turn_timeout(self) -> None:
        await asyncio.sleep(self.reply_seconds)
        self._turn = None
        await self.emit(
            {"event": "chat.error", "error": "The agent did not reply in time", "code": "reply_timeout"}
        )

    # -- commands from the agent -------------------------------------------------------------
    async def handle_command(self, frame: Mapping[str, Any]) -> None:
        # Queued, not handled inline: the agent's /client reader must never wait on a slow browser.
        try:
            self._inbox.put_nowait(dict(frame))
        except asyncio.QueueFull:
            await self.send_to_agent(
                error_frame("Too many commands waiting for this chat; slow down", "RATE_LIMITED")
            )

    async def _run_pump(self) -> None:
        while True:
            frame = await self._inbox.get()
            try:
                await self._command(frame)
            except VoiceError as exc:
                await self.send_to_agent(error_frame(exc.detail, exc.frame_code))
            except Exception:
                log.exception("chat command %r failed", frame.get("event"))
                await self.send_to_agent(
                    error_frame("Internal error handling that command", "INTERNAL_ERROR")
                )

    async def _command(self, frame: Frame) -> None:
        name = frame.get("event")
        if name == "bot.reply":
            await self._reply(frame)
        elif name == "bot.reply.stream":
            await self._stream(frame)
        elif name in HISTORY_COMMANDS:
            for answer in await self.memory.answer(frame):
                await self.send_to_agent(answer)
        elif name == "bot.cancel":
            target = frame.get("message_id")
            for message_id in [m for m in self._streams if target in (None, m)]:
                await self._finish(message_id, self._streams.pop(message_id), frame)
        elif name == "bot.clear":
            return  # nothing is queued for playback on a text chat
        else:
            await super().handle_command(frame)

    async def _reply(self, frame: Frame) -> None:
        text = frame.get("text")
        if not isinstance(text, str) or len(text) > MAX_REPLY_CHARS:
            raise BadRequest(f"bot.reply needs 'text', a string of at most {MAX_REPLY_CHARS} characters")
        message_id = _message_id(frame)
        previous = ""
        for prefix in reply_chunks(text):
            self._keep_turn()
            await self.emit(
                {
                    "event": "chat.token",
                    "message_id": message_id,
                    "text": prefix,
                    "token": prefix[len(previous) :],
                }
            )
            previous = prefix
            await asyncio.sleep(0)  # let other sessions' frames interleave with a long reply
        await self._finish(message_id, text, frame)

    async def _stream(self, frame: Frame) -> None:
        action, message_id = frame.get("action"), frame.get("message_id")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= 128:
            raise BadRequest("bot.reply.stream needs a 'message_id'")
        if action == "start" or (action == "chunk" and message_id not in self._streams):
            if message_id not in self._streams and len(self._streams) >= MAX_STREAMS:
                raise BadRequest(f"at most {MAX_STREAMS} streamed replies at once")
            self._streams.setdefault(message_id, "")
        if action == "chunk":
            token = frame.get("token", frame.get("text", ""))
            if not isinstance(token, str):
                raise BadRequest("bot.reply.stream chunk needs a string 'token'")
            text = self._streams[message_id] + token
            if len(text) > MAX_REPLY_CHARS:
                raise BadRequest(f"a streamed reply is longer than {MAX_REPLY_CHARS} characters")
            self._streams[message_id] = text
            self._keep_turn()
            await self.emit({"event": "chat.token", "message_id": message_id, "text": text, "token": token})
        elif action == "end":
            await self._finish(message_id, self._streams.pop(message_id, ""), frame)
        elif action != "start":
            raise BadRequest("bot.reply.stream 'action' must be start, chunk or end")

    def _keep_turn(self) -> None:
        """The agent is answering: the reply timeout starts again from now."""
        if self._turn is not None:
            self._arm_turn()

    async def _finish(self, message_id: str, text: str, frame: Mapping[str, Any]) -> None:
        self._disarm_turn()
        await self.emit({"event": "chat.done", "message_id": message_id, "text": text})
        # The reply reached the browser: the SDK's call.say() resolves on bot.finished and
        # message.confirmed puts the assistant line into call.messages (pinecall/sdk bot.ts).
        await self.send_to_agent({"event": "bot.finished", "message_id": message_id, "text": text})
        if text:
            await self.send_to_agent({"event": "message.confirmed", "message_id": message_id, "text": text})
        if text and frame.get("add_to_history", True) is not False:
            await self.memory.history.append([Message("assistant", text)])

    # -- the end -----------------------------------------------------------------------------
    async def close_transport(self, reason: str) -> None:
        self._disarm_turn()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        code = 1001 if reason == "server_shutdown" else 1000  # 1001 = going away (RFC 6455 §7.4.1)
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code, reason[:120])


async def _admit(node: Node, websocket: WebSocket) -> tuple[ChatSession, list[Message]]:
    """Check everything, then consume the token and start the session (module docstring)."""
    params = websocket.query_params
    thread = params.get("thread")
    if thread is not None and not valid_thread(thread):
        raise BadRequest("thread must be 1-128 characters of letters, digits and _ . : -")
    token = params.get("token")
    if not token:
        raise TokenInvalid("no token in the query string")
    async with admit(node, token, Channel.CHAT) as (claims, reservation):
        sealed_thread = claims.metadata.get("threadId")
        sealed = isinstance(sealed_thread, str) and valid_thread(sealed_thread)
        if sealed:  # a backend-sealed thread wins over the browser's (web ChatSession docs)
            thread = str(sealed_thread)
        settings = node.settings
        history = (
            StoredHistory(
                node.store,
                thread_key(claims.org_id, claims.agent_id, thread, sealed),
                settings.chat_history_ttl,
                max_bytes=settings.chat_thread_max_bytes,
                indexes=thread_indexes(
                    claims.org_id,
                    claims.agent_id,
                    sealed,
                    _client_ip(websocket, settings),
                    settings.chat_threads_per_agent,
                    settings.chat_threads_per_client,
                ),
            )
            if thread
            else LocalHistory()
        )
        prior = await history.read() if thread else []
        session = ChatSession(websocket, claims, thread, Memory(history), settings.chat_reply_seconds)
        session.greeting = greeting_of((await node.registry.find(claims.org_id, claims.agent_id)).config, {})
        await node.sessions.start(session, reservation)
    return session, prior


def _client_ip(websocket: WebSocket, settings: Settings) -> str:
    peer = websocket.client.host if websocket.client else None
    return client_ip(peer, websocket.headers.get("x-forwarded-for"), settings.trusted_proxies)


async def _refuse(websocket: WebSocket, exc: VoiceError) -> None:
    """The close naming the code (CONTRACT §4), after an ``error`` frame for a browser: the web
    client's ChatSession leaves ``connecting`` only on an ``error`` event (pinecall/web
    src/chat/ChatSession.ts); a close alone left the page connecting for good. A client with no
    ``Origin`` (a backend, a test) gets the close alone, on its first ``recv``."""
    event(log, "chat refused", code=exc.code, detail=exc.detail)
    if "origin" in websocket.headers:  # a browser: backends and the contract's clients see the close first
        with contextlib.suppress(Exception):
            await websocket.send_json(error_frame(exc.detail, exc.code))
    with contextlib.suppress(Exception):
        await websocket.close(exc.ws_close_code, exc.code)


async def chat_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """``chat_endpoint`` as a plain ASGI app (``VoiceApp``'s fast lane), failing as the router
    would: an unexpected error is logged and the socket closed with 1011."""
    websocket = WebSocket(scope, receive, send)
    try:
        await chat_endpoint(websocket)
    except Exception:
        log.exception("unhandled error in a chat session")
        if websocket.application_state is not WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(1011, "internal_error")


async def chat_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    await websocket.accept()  # accept first: a refusal must be a close frame with a reason
    try:
        session, prior = await _admit(node, websocket)
    except VoiceError as exc:
        await _refuse(websocket, exc)
        return
    try:
        await session.emit({"event": "chat.connected", "session_id": session.session_id})
        if prior:
            await session.emit(
                {"event": "chat.history", "messages": [{"role": m.role, "text": m.text} for m in prior]}
            )
        session.open()
        if not prior and session.greeting is not None:  # a new conversation opens with it
            await session.handle_command(greeting_frame(session.greeting))
        await _serve(node, session)
    finally:
        await session.end("client_closed")


async def _serve(node: Node, session: ChatSession) -> None:
    limit = node.settings.max_frame_bytes
    while session.end_reason is None:
        try:
            message = await session.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        try:
            text = message.get("text")
            session.inbound(len(text) if text is not None else len(message.get("bytes") or b""))
            frame = parse_frame(text, limit)
            session.trace("browser->server", frame)
            await session.on_browser(frame)
        except VoiceError as exc:
            await session.emit({"event": "chat.error", "error": exc.detail, "code": exc.code})
        except Exception:
            log.exception("error handling a chat frame")
            await session.emit({"event": "chat.error", "error": "Internal error", "code": "internal_error"})
