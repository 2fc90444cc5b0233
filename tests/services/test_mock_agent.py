"""The built-in mock agent: online through the real registry with a greeting in its config (the
server opens each session with it), echoes user.message / chat.message, in-process and over a
real dev server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
import websockets

from server.errors import AgentNotOnline
from server.services.agents import AgentRegistry, RegistrySettings
from server.services.calls import CallRouter
from server.services.mock_agent import MockAgent
from server.services.node import Node
from server.services.sessions import Session
from server.settings import DEV_MOCK_AGENT_ORIGINS, Settings, SettingsError
from server.store import MemoryStore
from tests.realtime.test_chat_ws import closed_with, recv, until
from tests.support.procs import ServerProcess, running_server

KEY = "sk_test_dev_mock_0123456789abcdef"


# -- in-process ---------------------------------------------------------------------------------
class Transport(Session):
    """A voice-like transport (WebRTC sends call.started and user.message the same way)."""

    transport = "webrtc"
    call_prefix = "wrt_"

    def __init__(self, org_id: str, agent_id: str) -> None:
        super().__init__(org_id, agent_id)
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle_command(self, frame: Mapping[str, Any]) -> None:
        await self.commands.put(dict(frame))


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    settings = Settings(
        token_secrets=("s",),
        mock_agent="helper",
        mock_agent_origins=("https://*.example.com",),
        mock_agent_greeting="Welcome!",
    ).resolved()
    opened = await Node.open(settings, MemoryStore())
    yield opened
    await opened.aclose()


async def test_the_mock_agent_is_online_through_the_registry(node: Node) -> None:
    record = await node.registry.find("dev", "helper")
    assert record.allowed_origins == ("https://*.example.com",)
    assert (await node.registry.find_public("helper")).org_id == "dev"


async def test_its_greeting_is_config_the_server_speaks_and_it_echoes_user_messages(node: Node) -> None:
    """The greeting is in the mock agent's registration config, as an SDK agent's is: the server
    opens sessions with it (issue 18 item 2), so the agent itself sends no greeting."""
    assert (await node.registry.find("dev", "helper")).config["greeting"] == "Welcome!"
    session = Transport("dev", "helper")
    await node.sessions.start(session)
    await session.send_to_agent({"event": "user.message", "text": "ping", "message_id": "u1"})
    echo = await asyncio.wait_for(session.commands.get(), 5)  # the first command is the echo
    assert echo["text"] == "You said: ping" and echo["in_reply_to"] == "u1"
    assert echo["call_id"] == session.call_id and echo["message_id"].startswith("msg_")
    await session.end("hangup")


async def test_it_goes_offline_when_stopped() -> None:
    store = MemoryStore()
    registry = AgentRegistry(store, RegistrySettings("node-t", "http://127.0.0.1:1", 10.0))
    calls = CallRouter()

    async def deliver(org_id: str, call_id: str, frame: Mapping[str, Any]) -> bool:
        handler = calls.get(call_id, org_id)
        return handler is not None

    agent = MockAgent(registry, deliver, org_id="acme", agent_id="helper", origins=(), greeting="hi")
    await agent.start()
    assert [r.agent_id for r in registry.local_agents()] == ["helper"]
    assert (await registry.find("acme", "helper")).config["mock"] is True
    await agent.stop()
    assert registry.local_agents() == []
    with pytest.raises(AgentNotOnline):
        await registry.find("acme", "helper")
    await registry.stop()
    await store.aclose()


def test_settings_default_to_a_demo_agent_in_dev_mode_only() -> None:
    dev = Settings.from_env({"VOICE_DEV": "1"})
    assert (dev.mock_agent, dev.mock_agent_origins, dev.mock_agent_org) == (
        "demo",
        DEV_MOCK_AGENT_ORIGINS,
        "dev",
    )
    keyed = Settings.from_env({"VOICE_DEV": "1", "VOICE_API_KEYS": f"acme:{KEY}"})
    assert keyed.mock_agent_org == "acme", "the org of the first key, so the printed key can mint for it"
    assert Settings.from_env({"VOICE_DEV": "1", "VOICE_MOCK_AGENT": "off"}).mock_agent == ""
    assert Settings.from_env({"VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd"}).mock_agent == ""
    assert (
        Settings.from_env(
            {"VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd", "VOICE_MOCK_AGENT": "My_Bot"}
        ).mock_agent
        == "my-bot"
    )
    with pytest.raises(SettingsError, match="VOICE_MOCK_AGENT_ORIGINS"):
        Settings.from_env({"VOICE_DEV": "1", "VOICE_MOCK_AGENT_ORIGINS": "https://*.com.evil/x"})


# -- a real dev server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_server() -> Any:
    env = {"VOICE_DEV": "1", "VOICE_API_KEYS": f"acme:{KEY}", "VOICE_RATE_LIMIT_PUBLIC": "0"}
    with running_server(env) as server:
        yield server


async def chat_with(server: ServerProcess, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(f"{server.ws_url}/chat/ws?token={token}")
    assert (await recv(ws))["event"] == "chat.connected"
    return ws


async def test_the_dev_banner_curl_mints_for_the_mock_agent(dev_server: ServerProcess) -> None:
    found = re.search(
        r'curl -H "Authorization: Bearer (\S+)" "(\S+/chat/token\?agent_id=demo)"', dev_server.log()
    )
    assert found is not None, dev_server.log()
    async with httpx.AsyncClient() as http:
        response = await http.get(found.group(2), headers={"Authorization": f"Bearer {found.group(1)}"})
    assert response.status_code == 200 and response.json()["token"].startswith("cht_")


async def test_mock_agent_echo_over_chat(dev_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=dev_server.url) as http:
        minted = await http.get(
            "/chat/token", params={"agent_id": "demo"}, headers={"Authorization": f"Bearer {KEY}"}
        )
    ws = await chat_with(dev_server, minted.json()["token"])
    greeting = await until(ws, "chat.done")
    assert greeting["text"].startswith("Hi! I'm the mock agent")
    await ws.send(json.dumps({"event": "message", "text": "hello mock"}))
    assert (await until(ws, "chat.done"))["text"] == "You said: hello mock"
    await ws.close()


async def test_the_public_path_works_from_the_mock_agents_origins_only(dev_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=dev_server.url) as http:
        local = await http.get(
            "/chat/token", params={"agent_id": "demo"}, headers={"Origin": "http://localhost:5173"}
        )
        evil = await http.get(
            "/chat/token", params={"agent_id": "demo"}, headers={"Origin": "https://evil.example"}
        )
    assert local.status_code == 200, local.text
    assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert evil.status_code == 403 and evil.json()["code"] == "origin_not_allowed"
    ws = await chat_with(dev_server, local.json()["token"])
    await until(ws, "chat.done")
    await ws.close()
    assert await closed_with(ws) == (1000, "")


async def test_dev_mode_without_the_mock_agent() -> None:
    with running_server(
        {"VOICE_DEV": "1", "VOICE_API_KEYS": f"acme:{KEY}", "VOICE_MOCK_AGENT": "off"}
    ) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get(
                "/chat/token", params={"agent_id": "demo"}, headers={"Authorization": f"Bearer {KEY}"}
            )
    assert response.status_code == 404 and response.json()["code"] == "agent_not_online"
