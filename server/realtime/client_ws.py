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
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from server.core.apikeys import KeyKind
from server.core.slugs import agent_slug
from server.core.wire import Frame, error_frame, parse_frame, text_field
from server.errors import BadRequest, CapacityExceeded, InvalidApiKey, RegistrationError, VoiceError
from server.log import event
from server.services.node import Node

log = logging.getLogger("voice.client")
HANDSHAKE_SECONDS = 10.0
PROTOCOL_VERSION = 1
# Keys of agent.create that are not configuration.
_NOT_CONFIG = frozenset({"event", "agent_id", "allowed_origins"})


MAX_DEV_CALLERS = 100


class ClientConnection:
    """One SDK socket: the org it authenticated as, and a serialised writer."""

    def __init__(self, websocket: WebSocket, org_id: str, key_id: str = "") -> None:
        self.websocket = websocket
        self.org_id = org_id
        self.key_id = key_id  # the API key it authenticated with: a revoke closes the socket
        self.conn_id = "conn_" + secrets.token_hex(6)
        self.dev_callers: tuple[str, ...] = ()  # agent.routeCallers([...]): kept, no phone to route
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
            frame: Frame | None = None
            try:
                frame = parse_frame(raw if isinstance(raw, str) else None, node.settings.max_frame_bytes)
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
        self.handlers: dict[str, Callable[[Frame], Awaitable[None]]] = {
            "ping": self.ping,
            "pong": self.ignore,
            "agent.create": self.agent_create,
            "agent.configure": self.agent_configure,
            "channel.add": self.channel_add,
            "channel.remove": self.channel_remove,
            "channel.configure": self.channel_configure,
            "dev.config": self.dev_config,
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
        """``agent.routeCallers([...])``: which callers' phone calls reach this dev agent. Sent
        with no agent id and re-sent on every re-registration, with no answer expected (pinecall/sdk
        domain/agent.ts). This server places and takes no phone calls, so the list is kept on
        the connection and changes nothing; it is checked, and accepted quietly instead of the
        ``unknown event`` error the SDK drew on every reconnect."""
        callers = frame.get("callers")
        if (
            not isinstance(callers, list)
            or len(callers) > MAX_DEV_CALLERS
            or not all(isinstance(c, str) and 0 < len(c) <= 32 for c in callers)
        ):
            raise BadRequest(f"dev.config needs 'callers': a list of at most {MAX_DEV_CALLERS} phone numbers")
        self.connection.dev_callers = tuple(callers)

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
        config = {k: v for k, v in frame.items() if k not in _NOT_CONFIG}
        await self.node.registry.configure(self.connection, slug, config)
        await self.connection.send({"event": "agent.configured", "agent_id": raw})

    async def channel_add(self, frame: Frame) -> None:
        slug, raw = self._agent(frame)
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
