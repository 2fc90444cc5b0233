"""A Python agent that speaks ``/client`` as ``@pinecall/sdk`` does (CONTRACT §6), and the chat
client a browser would be (§4), for tests.

The agent connects with the server's API key, registers (``agent.create`` with its config and
``allowed_origins``, then one ``channel.add`` per channel), keeps every frame it receives, and
answers each ``user.message`` (voice) and ``chat.message`` (chat) with a ``bot.reply`` of what
its ``reply`` function returns (``You said: <text>`` unless told otherwise; ``None`` = no reply).

Everything runs on the server handle's background event loop; the methods here are plain
blocking calls, so a test needs no async plugin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection

if TYPE_CHECKING:
    from server.testkit.browser import BrowserCall
    from server.testkit.process import VoiceServer

Reply = Callable[[str, Mapping[str, Any]], str | None]
PING_SECONDS = 10.0  # the SDK pings every 30 s; tests may shorten the heartbeat TTL


def echo(text: str, frame: Mapping[str, Any]) -> str:
    return f"You said: {text}"


class SessionRefused(AssertionError):
    """The server refused to open a session: ``code`` is its stable code (``token_expired``,
    ``token_spent``...), ``status`` the HTTP status or WebSocket close code."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(f"session refused: {status} {code} {detail}".rstrip())
        self.status = status
        self.code = code


class Frames:
    """Frames received, in order, and a way to wait for one that matches."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def add(self, frame: dict[str, Any]) -> None:
        async with self._changed:
            self.items.append(frame)
            self._changed.notify_all()

    async def wait_for(
        self, event: str, within: float, start: int = 0, stop_on: tuple[str, ...] = (), **match: Any
    ) -> dict[str, Any]:
        """The first frame from index ``start`` called ``event`` whose fields include ``match``
        (a frame called one of ``stop_on`` fails the wait)."""

        def found() -> dict[str, Any] | None:
            for frame in self.items[start:]:
                name = frame.get("event")
                if name == event and all(frame.get(k) == v for k, v in match.items()):
                    return frame
                if name in stop_on:
                    raise AssertionError(f"got {frame} while waiting for {event}")
            return None

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), within)
            except TimeoutError:
                seen = [f.get("event") for f in self.items[start:]]
                raise AssertionError(f"no {event} {match or ''} within {within:g}s; got {seen}") from None
            result = found()
            assert result is not None
            return result


class VoiceAgent:
    """One agent on its own ``/client`` connection. ``frames`` is everything the server sent it."""

    def __init__(self, server: VoiceServer, agent_id: str, reply: Reply = echo) -> None:
        self.server = server
        self.agent_id = agent_id
        self.reply: Reply = reply
        self.org_id: str | None = None
        self._frames: Frames | None = None
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closeables: list[ChatSession | BrowserCall] = []

    # -- on the loop -------------------------------------------------------------------------------
    async def start(
        self, channels: tuple[str, ...], allowed_origins: list[str] | None, config: Mapping[str, Any]
    ) -> None:
        self._frames = Frames()
        ws = await websockets.connect(_ws_url(self.server.url, "/client"))
        self._ws = ws
        await ws.send(json.dumps({"event": "connect", "api_key": self.server.api_key}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if hello.get("event") != "connected":
            await ws.close()
            raise ConnectionError(f"/client refused the key: {hello}")
        self.org_id = hello["org_id"]
        self._tasks = [asyncio.create_task(self._read(ws)), asyncio.create_task(self._ping(ws))]
        create: dict[str, Any] = {"event": "agent.create", "agent_id": self.agent_id, **config}
        if allowed_origins is not None:
            create["allowed_origins"] = allowed_origins
        await self._command(create, "agent.created")
        for channel in channels:
            await self._command(
                {"event": "channel.add", "agent_id": self.agent_id, "type": channel}, "channel.added"
            )

    async def _command(self, frame: dict[str, Any], answer: str) -> dict[str, Any]:
        assert self._ws is not None and self._frames is not None
        start = len(self._frames.items)
        await self._ws.send(json.dumps(frame))
        return await self._frames.wait_for(answer, 10, start=start, stop_on=("error",))

    async def _read(self, ws: ClientConnection) -> None:
        assert self._frames is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                frame = json.loads(message)
                if not isinstance(frame, dict):
                    continue
                await self._frames.add(frame)
                if frame.get("event") in ("user.message", "chat.message"):
                    await self._answer(ws, frame)

    async def _answer(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        text, call_id = frame.get("text"), frame.get("call_id")
        if not isinstance(text, str) or not isinstance(call_id, str):
            return
        reply = self.reply(text, frame)
        if reply is not None:
            await ws.send(json.dumps(_bot_reply(call_id, reply)))

    async def _ping(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.sleep(PING_SECONDS)
                await ws.send(json.dumps({"event": "ping"}))

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    # -- blocking API for tests --------------------------------------------------------------------
    @property
    def frames(self) -> list[dict[str, Any]]:
        """Every frame the server sent this agent, oldest first (a copy)."""
        return list(self._frames.items) if self._frames else []

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("event") == name]

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first frame (since the agent connected) called ``event`` with fields ``match``."""
        assert self._frames is not None
        return self.server.run(self._frames.wait_for(event, timeout, **match), None)

    def send(self, frame: Mapping[str, Any]) -> None:
        """A raw frame on the ``/client`` socket (``call.hangup``, ``bot.reply.stream``, ...)."""
        assert self._ws is not None
        self.server.run(self._ws.send(json.dumps(dict(frame))))

    def say(self, call_id: str, text: str) -> None:
        """A ``bot.reply`` into a live call, unprompted."""
        self.send(_bot_reply(call_id, text))

    def hangup(self, call_id: str) -> None:
        self.send({"event": "call.hangup", "call_id": call_id})

    def mint(self, channel: str = "chat", metadata: Mapping[str, Any] | None = None, **params: str) -> str:
        """A token for this agent from the backend path; fails the test unless the mint is 200."""
        response = self.server.mint(self.agent_id, channel, metadata, **params)
        assert response.status_code == 200, f"mint refused: {response.status_code} {response.text}"
        token: str = response.json()["token"]
        return token

    def chat(
        self, thread: str | None = None, metadata: Mapping[str, Any] | None = None, token: str | None = None
    ) -> ChatSession:
        """A browser's chat with this agent, open once ``chat.connected`` arrived: with a fresh
        backend-minted ``cht_`` token, or ``token``. A refused token raises :class:`SessionRefused`."""
        session = ChatSession(self, token or self.mint("chat", metadata))
        self.server.run(session.open(thread))
        self._closeables.append(session)
        return session

    def browser(self, config: Mapping[str, Any] | None = None, token: str | None = None) -> BrowserCall:
        """A WebRTC call from an aiortc stand-in for ``@pinecall/web`` (microphone track and the
        ``events`` data channel), connected once the data channel is open; with a fresh
        ``wrtc_`` token or ``token``. A refused offer raises :class:`SessionRefused`."""
        from server.testkit.browser import BrowserCall

        call = BrowserCall(self, token or self.mint("webrtc"))
        self.server.run(call.open(config))
        self._closeables.append(call)
        return call

    def call_id_of(self, session_id: str, timeout: float = 10.0) -> str:
        """The call id the server gave the session ``session_id`` (from its start frame)."""
        return self.server.run(asyncio.wait_for(self._started(session_id), timeout), None)

    async def _started(self, session_id: str) -> str:
        assert self._frames is not None
        while True:
            for frame in self._frames.items:
                started = frame.get("event") in ("call.started", "llm.chat.started")
                if started and frame.get("session_id") == session_id:
                    return str(frame["call_id"])
            await asyncio.sleep(0.02)

    def close(self) -> None:
        """Close this agent's chats and calls, then its ``/client`` socket (the agent goes offline)."""
        for item in reversed(self._closeables):
            item.close()
        self._closeables.clear()
        with contextlib.suppress(Exception):
            self.server.run(self._close(), 10)
        self.server.forget(self)

    def __enter__(self) -> VoiceAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChatSession:
    """``WS /chat/ws?token=…`` as the web chat client opens it."""

    def __init__(self, agent: VoiceAgent, token: str) -> None:
        self.agent = agent
        self.token = token
        self.session_id = ""
        self._frames = Frames()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self, thread: str | None) -> None:
        query = {"token": self.token, **({"thread": thread} if thread else {})}
        ws = self._ws = await websockets.connect(
            _ws_url(self.agent.server.url, "/chat/ws?" + urlencode(query))
        )
        self._reader = asyncio.create_task(self._read(ws))
        try:
            connected = await self._frames.wait_for("chat.connected", 10, stop_on=("socket.closed",))
        except AssertionError:
            # A refused token: the socket is closed before anything is sent, reason = the code.
            closed = next((f for f in self._frames.items if f["event"] == "socket.closed"), None)
            if closed is None:
                raise
            raise SessionRefused(closed["code"], closed["reason"]) from None
        self.session_id = connected["session_id"]

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                frame = json.loads(message)
                if isinstance(frame, dict):
                    await self._frames.add(frame)
        # Not a server frame: how the socket ended, so a test can wait for the close too.
        code, reason = (ws.close_code or 1006), (ws.close_reason or "")
        await self._frames.add({"event": "socket.closed", "code": code, "reason": reason})

    async def _send(self, text: str, within: float) -> str:
        assert self._ws is not None
        start = len(self._frames.items)
        await self._ws.send(json.dumps({"event": "message", "text": text}))
        while True:
            stop = ("chat.error", "socket.closed")
            done = await self._frames.wait_for("chat.done", within, start=start, stop_on=stop)
            if not str(done.get("message_id", "")).startswith("greet_"):
                return str(done["text"])
            start = self._frames.items.index(done) + 1

    @property
    def call_id(self) -> str:
        """The chat's call id (``chat-…``), as the agent saw it in ``llm.chat.started``."""
        return self.agent.call_id_of(self.session_id)

    @property
    def frames(self) -> list[dict[str, Any]]:
        return list(self._frames.items)

    def send(self, text: str, timeout: float = 10.0) -> str:
        """Send a message; the agent's reply, once ``chat.done`` arrives (``chat.error`` fails)."""
        return self.agent.server.run(self._send(text, timeout), None)

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        return self.agent.server.run(self._frames.wait_for(event, timeout, **match), None)

    def close(self) -> None:
        async def close() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._reader is not None:
                await asyncio.wait([self._reader], timeout=5)

        with contextlib.suppress(Exception):
            self.agent.server.run(close(), 10)

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bot_reply(call_id: str, text: str) -> dict[str, Any]:
    return {
        "event": "bot.reply",
        "call_id": call_id,
        "message_id": "msg_" + secrets.token_hex(8),
        "text": text,
    }


def _ws_url(base: str, path: str) -> str:
    return base.replace("http", "ws", 1).rstrip("/") + path
