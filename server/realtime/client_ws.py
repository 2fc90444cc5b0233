"""``WS /client``: the backend SDK's connection (CONTRACT §6).

1. ``connect {api_key}`` must be the first frame, within 10 s → ``connected {org_id}``.
2. ``agent.create`` → ``agent.created``; the agent is online while this socket lives.
3. ``agent.configure``, ``channel.add`` / ``channel.remove`` / ``channel.configure``, ``ping``.
4. Call commands (``bot.reply``, ``call.hangup``, ``history.*``...) go to the live call they name.

Every bad frame gets an ``error`` frame and the connection goes on; only a bad handshake
closes it. Nothing a client sends can crash the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.core.apikeys import KeyKind
from server.core.devroute import CONFIG_KEY as DEV_CALLERS
from server.core.devroute import MAX_CALLERS, parse_callers
from server.core.slugs import agent_slug
from server.core.wire import Frame, error_frame, parse_frame, text_field
from server.errors import (
    BadRequest,
    CapacityExceeded,
    InvalidApiKey,
    PayloadTooLarge,
    RegistrationError,
    VoiceError,
)
from server.log import event
from server.realtime.client_chat import ClientChats
from server.realtime.phone_commands import call_dial, line_create, line_destroy
from server.realtime.session_commands import session_command
from server.services.node import Node

log = logging.getLogger("voice.client")
HANDSHAKE_SECONDS = 10.0
PROTOCOL_VERSION = 1
# Keys of agent.create that are not configuration.
_NOT_CONFIG = frozenset({"event", "agent_id", "allowed_origins"})


class ClientConnection:
    """One SDK socket: the org it authenticated as, and a serialised writer."""

    def __init__(self, websocket: WebSocket, org_id: str, key_id: str = "") -> None:
        self.websocket = websocket
        self.org_id = org_id
        self.key_id = key_id  # the API key it authenticated with: a revoke closes the socket
        self.conn_id = "conn_" + secrets.token_hex(6)
        self.dev_callers: tuple[str, ...] = ()  # the last dev.config, for an agent not created yet
        self.last_agent: str | None = None  # the agent dev.config (which names none) applies to
        self.frames_received = 0  # liveness a conflicting registration reads (AGENT_CONFLICT_FATAL)
        self._lock = asyncio.Lock()

    async def send(self, frame: Mapping[str, Any]) -> None:
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(
                    Exception
                ):  # a peer that vanished mid-write is handled by the reader
                    await self.websocket.send_json(dict(frame))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        async with self._lock:
            if self.websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code, reason)


async def _receive(websocket: WebSocket) -> str | bytes | None:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text: str | None = message.get("text")
    return text if text is not None else message.get("bytes")


async def _handshake(node: Node, websocket: WebSocket) -> ClientConnection | None:
    limit = node.settings.max_frame_bytes
    try:
        raw = await asyncio.wait_for(_receive(websocket), HANDSHAKE_SECONDS)
        frame = parse_frame(raw if isinstance(raw, str) else None, limit)
        if frame["event"] != "connect":
            raise BadRequest('the first frame must be {"event": "connect", "api_key": ...}')
        api_key = frame.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            raise InvalidApiKey("connect needs an api_key")
        key = await node.keys.authenticate(api_key, KeyKind.SECRET)
    except TimeoutError:
        await websocket.send_json(error_frame("No connect frame within 10 seconds", "HANDSHAKE_TIMEOUT"))
        await websocket.close(1008, "handshake timeout")
        return None
    except VoiceError as exc:
        if node.journal is not None:
            node.journal.note("client.refuse", code=exc.code)
        await websocket.send_json(error_frame(exc.detail, exc.frame_code))
        await websocket.close(exc.ws_close_code, exc.code)
        return None
    return ClientConnection(websocket, key.org_id, key.key_id)


def _check_size(raw: str | bytes | None, frame: Frame, limit: int) -> None:
    """Refuse a frame over ``VOICE_CLIENT_FRAME_BYTES`` with an error frame naming the bound
    (issue 18 item 8: a 1009 close made the SDK reconnect and re-send it every second). An
    ``agent.create`` is refused as REGISTRATION_ERROR, on which the SDK fails ``agent.ready``
    at once (dispatch/handlers/error.ts); anything else is PAYLOAD_TOO_LARGE."""
    if not isinstance(raw, str) or len(raw) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
        return
    size = len(raw.encode("utf-8", "surrogateescape"))
    if size <= limit:
        return
    detail = (
        f"{frame['event']} frame of {size} bytes is over this server's /client limit of {limit} "
        "bytes (VOICE_CLIENT_FRAME_BYTES); shorten the prompt, tools or config"
    )
    raise RegistrationError(detail) if frame["event"] == "agent.create" else PayloadTooLarge(detail)


async def client_endpoint(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    await websocket.accept()
    if node.draining:
        await websocket.send_json(error_frame("Server is draining; reconnect", "SERVER_DRAINING"))
        await websocket.close(1012, "server draining")  # 1012 = service restart: clients reconnect
        return
    try:
        connection = await _handshake(node, websocket)
    except WebSocketDisconnect:
        return
    if connection is None:
        return
    node.connections.add(connection)
    await connection.send(
        {
            "event": "connected",
            "org_id": connection.org_id,
            "connection_id": connection.conn_id,
            "protocol_version": PROTOCOL_VERSION,
        }
    )
    event(log, "sdk connected", org_id=connection.org_id, conn_id=connection.conn_id)
    if node.journal is not None:
        node.journal.note("client.connect", org=connection.org_id)
    session = _Session(node, connection)
    try:
        while True:
            raw = await _receive(websocket)
            connection.frames_received += 1
            frame: Frame | None = None
            try:
                frame = parse_frame(raw if isinstance(raw, str) else None, node.settings.ws_max_frame_bytes)
                _check_size(raw, frame, node.settings.client_frame_bytes)
                await session.dispatch(frame)
            except VoiceError as exc:
                agent_id = frame.get("agent_id") if frame is not None else None
                if node.journal is not None and frame is not None and frame.get("event") == "agent.create":
                    node.journal.note(
                        "client.refuse",
                        code=exc.code,
                        agent_id=agent_id if isinstance(agent_id, str) else None,
                    )
                await connection.send(
                    error_frame(
                        exc.detail,
                        exc.frame_code,
                        agent_id=agent_id if isinstance(agent_id, str) else None,
                        **exc.frame_fields(),
                    )
                )
            except WebSocketDisconnect:
                raise
            except Exception:
                log.exception("error handling a /client frame")
                await connection.send(error_frame("Internal error handling that frame", "INTERNAL_ERROR"))
    except WebSocketDisconnect:
        pass
    finally:
        try:
            await session.chats.close()
        except Exception:
            log.exception("ending the llm.chat sessions of %s failed", connection.conn_id)
        gone = await node.connection_closed(connection)
        event(
            log,
            "sdk disconnected",
            org_id=connection.org_id,
            conn_id=connection.conn_id,
            agents=[r.agent_id for r in gone],
        )


class _Session:
    """Dispatch of one authenticated connection's frames."""

    def __init__(self, node: Node, connection: ClientConnection) -> None:
        self.node = node
        self.connection = connection
        self.chats = ClientChats(node, connection)  # llm.chat: the SDK's ChatClient
        self.handlers: dict[str, Callable[[Frame], Awaitable[None]]] = {
            "ping": self.ping,
            "pong": self.ignore,
            "agent.create": self.agent_create,
            "agent.configure": self.agent_configure,
            "channel.add": self.channel_add,
            "channel.remove": self.channel_remove,
            "channel.configure": self.channel_configure,
            "dev.config": self.dev_config,
            "session.configure": functools.partial(session_command, node, connection),
            "session.pause": functools.partial(session_command, node, connection),
            "session.resume": functools.partial(session_command, node, connection),
            "session.send": functools.partial(session_command, node, connection),
            "line.create": functools.partial(line_create, node, connection),
            "line.destroy": functools.partial(line_destroy, node, connection),
            "call.dial": functools.partial(call_dial, node, connection),
            "llm.chat": self.chats.turn,
        }

    async def dispatch(self, frame: Frame) -> None:
        name = frame["event"]
        handler = self.handlers.get(name)
        if handler is not None:
            await handler(frame)
        elif isinstance(frame.get("call_id"), str):
            await self.call_command(frame)
        else:
            raise BadRequest(f"unknown event {name!r}")

    async def ping(self, frame: Frame) -> None:
        await self.connection.send({"event": "pong"})

    async def dev_config(self, frame: Frame) -> None:
        """``agent.routeCallers([...])``: only these callers reach the agent (core/devroute.py).
        The SDK sends it with no agent id, right after that agent's ``channel.add`` frames on
        every (re-)registration (pinecall/sdk domain/agent.ts ``_flushPending``), with no answer
        expected: it applies to the agent this connection registered or configured last (or
        names in ``agent_id``), stored in the agent's record so the WhatsApp path on any node
        honours it; sent before any agent, it waits for the next ``agent.create``."""
        callers = parse_callers(frame.get("callers"))
        if callers is None:
            raise BadRequest(f"dev.config needs 'callers': a list of at most {MAX_CALLERS} phone numbers")
        self.connection.dev_callers = tuple(callers)
        target = frame.get("agent_id", self.connection.last_agent)
        if target is not None:
            slug = agent_slug(target)
            await self.node.registry.configure(self.connection, slug, {DEV_CALLERS: callers})

    async def ignore(self, frame: Frame) -> None:
        return None

    def _agent(self, frame: Frame) -> tuple[str, str]:
        raw = text_field(frame, "agent_id", max_length=128)
        assert raw is not None
        return agent_slug(raw), raw

    async def agent_create(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
        if (
            len(self.node.registry.local_agents()) >= self.node.settings.max_agents_per_node
            and self.node.registry.local_connection(self.connection.org_id, slug) is None
        ):
            raise CapacityExceeded("This server holds as many agents as it can; try another node")
        config = {k: v for k, v in frame.items() if k not in _NOT_CONFIG}
        if self.connection.dev_callers and self.connection.last_agent is None:
            config[DEV_CALLERS] = list(self.connection.dev_callers)  # a dev.config sent before it
        self.connection.last_agent = slug
        record = await self.node.registry.register(
            self.connection, slug, config, frame.get("allowed_origins")
        )
        await self.connection.send({"event": "agent.created", "agent_id": raw})
        if self.node.journal is not None:
            self.node.journal.note("client.register", org=record.org_id, agent_id=slug)
        faults = self.node.faults
        if faults is not None and faults.active and faults.check("client", agent_id=slug) is not None:
            await self.node.connection_closed(self.connection)
            await self.connection.close(1011, "fault injected")
        event(log, "agent online", org_id=record.org_id, agent_id=slug, origins=list(record.allowed_origins))

    async def agent_configure(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
        self.connection.last_agent = slug
        config = {k: v for k, v in frame.items() if k not in _NOT_CONFIG}
        await self.node.registry.configure(self.connection, slug, config)
        await self.connection.send({"event": "agent.configured", "agent_id": raw})

    async def channel_add(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
        self.connection.last_agent = slug
        record = await self.node.registry.add_channel(self.connection, slug, frame)
        kind, ref = frame.get("type"), frame.get("ref")
        await self.connection.send({"event": "channel.added", "agent_id": raw, "type": kind, "ref": ref})
        event(log, "channel added", org_id=record.org_id, agent_id=slug, type=kind, ref=ref)

    async def channel_remove(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
        kind, ref = frame.get("type"), frame.get("ref")
        if kind is None:  # the SDK's removeChannel(ref) sends the ref alone
            kind = self.node.registry.channel_by_ref(self.connection, slug, ref).get("type")
        if not isinstance(kind, str):
            raise RegistrationError("channel.remove needs a type or a ref")
        # The SDK sends ref = type for channels without a number (webrtc, chat).
        ref_text = ref if isinstance(ref, str) and ref and ref != kind else None
        await self.node.registry.remove_channel(self.connection, slug, kind, ref_text)
        await self.connection.send({"event": "channel.removed", "agent_id": raw, "type": kind, "ref": ref})

    async def channel_configure(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
        if frame.get("type") is None:
            # The SDK's configureChannel(ref, config) sends the ref and the new settings alone:
            # they are merged into the channel that ref names.
            existing = self.node.registry.channel_by_ref(self.connection, slug, frame.get("ref"))
            frame = {**existing, **frame, "type": existing.get("type"), "ref": existing.get("ref")}
        await self.node.registry.add_channel(self.connection, slug, frame)
        await self.connection.send(
            {
                "event": "channel.configured",
                "agent_id": raw,
                "type": frame.get("type"),
                "ref": frame.get("ref") or frame.get("type"),
            }
        )

    async def call_command(self, frame: Frame) -> None:
        call_id = str(frame["call_id"])
        if not await self.node.deliver_command(self.connection.org_id, call_id, frame):
            await self.connection.send(
                error_frame(f"No live call '{call_id[:128]}'", "CALL_NOT_FOUND", call_id=call_id[:128])
            )
