"""``WS /ws/stream?token=<stm_...>[&agent=<slug>][&session=<id>][&after=<seq>]``: the events of a
stream token's agents, live and replayed, on any node (issue 12; the SDK's ``EventStream``).

Admission, each refusal a close frame with the error ``code`` as reason and nothing sent before
it: bad ``agent``/``session``/``after`` → ``bad_request``; forged, expired or wrong-channel
token → ``token_invalid``/``token_expired``/``token_wrong_channel`` (nothing spent); ``agent=``
not in the token's agent set → ``token_wrong_agent``; too many streams on this node →
``at_capacity``; then the token is consumed (``token_spent`` on a second use). The agents need
not be online: a dashboard may watch while an agent restarts.

Then ``{"event": "connected", "agents", "scope", "call_id", "session"}``, the replay of what is
kept after ``after`` (``log.gap {data: {from, resume_from}}`` first when some of it is gone),
``log.caught_up {data: {seq}}``, and live events: each is the frame the server sent the agent
(or the agent's command to its call) plus ``seq`` (one rising number per org: one cursor covers
every agent of the socket), ``ts``, ``agent``/``agent_id`` and ``session_id`` when known.

The client may send ``{"action": "ping"}`` (answered ``pong``) on any scope. A ``supervise``
token may also send ``say {call_id, text}`` (spoken or streamed in the call as a bot reply),
``whisper {call_id, text}`` (to the agent only, as ``supervisor.whispered``) and
``hangup {call_id}``, for calls this socket can see. Anything else gets an ``error`` frame with a
stable ``code`` (``scope_forbidden``, ``call_not_found``, ``bad_request``) and the socket stays
open. A reader more than ``VOICE_STREAM_QUEUE`` events behind is closed with 1013
``slow_consumer`` (the SDK reconnects with ``after=<last seq>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.core.scopes import SUPERVISE_ACTIONS, Access
from server.core.slugs import agent_slug
from server.core.text import is_ascii_number
from server.core.tokens import Channel, Claims
from server.core.wire import error_frame, parse_object, text_field
from server.errors import (
    BadRequest,
    CallNotFound,
    CapacityExceeded,
    TokenInvalid,
    TokenWrongAgent,
    VoiceError,
)
from server.log import event
from server.services.events import EventLog, StreamFilter, Subscription
from server.services.node import Node

log = logging.getLogger("voice.stream")
MAX_STREAMS = 10_000  # stream sockets on one node
MAX_AFTER = 2**53 - 1  # the largest cursor a JavaScript client can hold exactly
_SESSION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class _Query:
    """The query string, checked before the token is looked at."""

    def __init__(self, websocket: WebSocket) -> None:
        params = websocket.query_params
        self.token = params.get("token") or ""
        agent = params.get("agent")
        self.agent = agent_slug(agent) if agent else None
        if agent and not self.agent:
            raise BadRequest("agent must be an agent id")
        self.session = params.get("session") or None
        if self.session is not None and not _SESSION.fullmatch(self.session):
            raise BadRequest("session must be 1-128 characters of letters, digits and _ . : -")
        raw_after = params.get("after")
        self.after: int | None = None
        if raw_after is not None and raw_after != "":
            if not is_ascii_number(raw_after) or int(raw_after) > MAX_AFTER:
                raise BadRequest(f"after must be a whole number from 0 to {MAX_AFTER}")
            self.after = int(raw_after)


async def _admit(node: Node, websocket: WebSocket) -> tuple[Claims, StreamFilter, int | None]:
    query = _Query(websocket)
    if not query.token:
        raise TokenInvalid("no token in the query string")
    claims = node.authority.verify(query.token, Channel.STREAM)
    agents = frozenset(claims.agents)
    if query.agent is not None:
        if query.agent not in agents:
            raise TokenWrongAgent(f"this token does not cover agent {query.agent!r}")
        agents = frozenset((query.agent,))
    events = _events(node)
    if events.streams >= MAX_STREAMS:
        raise CapacityExceeded(f"This server is at its stream limit ({MAX_STREAMS})")
    claims = await node.authority.consume(query.token, Channel.STREAM)
    return claims, StreamFilter(claims.org_id, agents, claims.call_id, query.session), query.after


def _events(node: Node) -> EventLog:
    assert node.events is not None  # set by Node.open
    return node.events


async def stream_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    await websocket.accept()  # accept first: a refusal must be a close frame with a reason
    try:
        claims, where, after = await _admit(node, websocket)
    except VoiceError as exc:
        event(log, "stream refused", code=exc.code, detail=exc.detail)
        with contextlib.suppress(Exception):
            await websocket.close(exc.ws_close_code, exc.code)
        return
    stream = _Stream(node, websocket, claims, where)
    with _events(node).subscribe(where, node.settings.stream_queue) as subscription:
        await stream.run(subscription, after)


class _Stream:
    def __init__(self, node: Node, websocket: WebSocket, claims: Claims, where: StreamFilter) -> None:
        self.node = node
        self.websocket = websocket
        self.where = where
        self.access = Access.of(claims)
        self.scope = self.access.scope
        self.calls: dict[str, str] = {}  # calls this socket has seen -> their agent
        self._lock = asyncio.Lock()

    async def send(self, frame: Mapping[str, Any]) -> None:
        async with self._lock:
            await self.websocket.send_json(dict(frame))

    async def run(self, subscription: Subscription, after: int | None) -> None:
        await self.send(
            {
                "event": "connected",
                "agents": sorted(self.where.agents),
                "scope": self.scope,
                "call_id": self.where.call_id,
                "session": self.where.session,
            }
        )
        reader = asyncio.create_task(self._read(), name="stream-read")
        writer = asyncio.create_task(self._write(subscription, after), name="stream-write")
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, VoiceError):
                    event(log, "stream closed", level=logging.WARNING, code=exc.code, detail=exc.detail)
                    await self._close(exc.ws_close_code, exc.code)
                elif exc is not None:
                    log.error("stream socket failed", exc_info=exc)
                    await self._close(1011, "internal_error")
        finally:
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._close(1000, "")

    async def _close(self, code: int, reason: str) -> None:
        if self.websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(code, reason)

    async def _write(self, subscription: Subscription, after: int | None) -> None:
        async for frame in subscription.frames(after):
            call_id = frame.get("call_id")
            if isinstance(call_id, str) and isinstance(frame.get("agent_id"), str):
                self.calls[call_id] = frame["agent_id"]
                if frame.get("event") in ("call.ended", "llm.chat.ended"):
                    self.calls.pop(call_id, None)
            await self.send(frame)

    async def _read(self) -> None:
        limit = self.node.settings.max_frame_bytes
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._on_frame(parse_object(message.get("text"), limit))
            except VoiceError as exc:
                await self.send(error_frame(exc.detail, exc.code))

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        action = frame.get("action", frame.get("event"))
        if action == "ping":
            await self.send({"event": "pong"})
            return
        if action not in SUPERVISE_ACTIONS:
            raise BadRequest(f"unknown action {action!r}: a stream takes ping, say, whisper and hangup")
        self.access.check_supervise(str(action))
        call_id = text_field(frame, "call_id", 128)
        assert call_id is not None
        agent_id = self.calls.get(call_id)
        if agent_id is None or not self.access.sees_call(call_id):
            raise CallNotFound(f"call {call_id!r} is not live, or not one this stream can see")
        org_id = self.where.org_id
        if action == "whisper":
            text = text_field(frame, "text")
            whisper = {"event": "supervisor.whispered", "call_id": call_id, "text": text, "by": "supervisor"}
            delivered = await self.node.registry.send(org_id, agent_id, whisper)
        elif action == "say":
            text = text_field(frame, "text")
            reply = {
                "event": "bot.reply",
                "call_id": call_id,
                "message_id": "sup_" + secrets.token_hex(8),
                "text": text,
                "by": "supervisor",
            }
            delivered = await self.node.command_call(org_id, agent_id, call_id, reply)
        else:
            hangup = {"event": "call.hangup", "call_id": call_id}
            delivered = await self.node.command_call(org_id, agent_id, call_id, hangup)
        if not delivered:
            raise CallNotFound(f"call {call_id!r} is not live")
        await self.send({"event": "ack", "action": action, "call_id": call_id})
