"""The bench's agent: one SDK socket on ``/client`` that registers an agent (public path
included, through ``allowed_origins``) and stays open for the whole run.

Its frames are read and dropped as they come: every chat session of the consume row sends it
``llm.chat.started`` and ``call.ended``; left unread they would fill the socket's buffers, and
the websockets client stops answering pings once its queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType

import websockets
from websockets.asyncio.client import ClientConnection

AGENT_ID = "bench-agent"
ORIGIN = "https://bench.example"


class AgentRefused(RuntimeError):
    pass


class BenchAgent:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._drain: asyncio.Task[None] | None = None
        self.frames = 0

    @classmethod
    async def connect(cls, ws_base: str, api_key: str) -> BenchAgent:
        ws = await websockets.connect(ws_base + "/client", open_timeout=10, max_size=1 << 20)
        try:
            await ws.send(json.dumps({"event": "connect", "api_key": api_key}))
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if hello.get("event") != "connected":
                raise AgentRefused(f"/client handshake refused: {hello}")
            await ws.send(
                json.dumps({"event": "agent.create", "agent_id": AGENT_ID, "allowed_origins": [ORIGIN]})
            )
            created = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if created.get("event") != "agent.created":
                raise AgentRefused(f"agent.create refused: {created}")
        except BaseException:
            await ws.close()
            raise
        agent = cls(ws)
        agent._drain = asyncio.create_task(agent._read_all(), name="bench-agent-drain")
        return agent

    async def _read_all(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in self._ws:
                self.frames += 1

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        await self._ws.close()

    async def __aenter__(self) -> BenchAgent:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
