"""A Python client that speaks /client frame by frame as the Pinecall SDK does (CONTRACT §6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class SdkClient:
    def __init__(self, ws: ClientConnection, org_id: str, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.org_id = org_id
        self.hello = hello
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @classmethod
    async def connect(cls, base_url: str, api_key: str, headers: dict[str, str] | None = None) -> SdkClient:
        url = base_url.replace("http", "ws", 1).rstrip("/") + "/client"
        ws = await websockets.connect(url, additional_headers=headers)
        await ws.send(json.dumps({"event": "connect", "api_key": api_key}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if hello.get("event") != "connected":
            await ws.close()
            raise ConnectionError(f"handshake refused: {hello}")
        return cls(ws, hello["org_id"], hello)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return frame

    async def wait_for(self, *names: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame named in ``names`` (or an ``error``), skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("event") in names or frame.get("event") == "error":
                return frame

    async def create_agent(self, agent_id: str, **config: Any) -> dict[str, Any]:
        await self.send({"event": "agent.create", "agent_id": agent_id, **config})
        return await self.wait_for("agent.created")

    async def close(self) -> None:
        await self.ws.close()
