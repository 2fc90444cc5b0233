"""Anonymous browsers cannot fill Redis through chat threads (issue 15 High 3).

A real server on a real redis-server, with small caps: every browser-chosen thread is bounded in
bytes, one client keeps at most ``VOICE_CHAT_THREADS_PER_CLIENT`` of them, an agent at most
``VOICE_CHAT_THREADS_PER_AGENT`` (the least recently written go first), and a backend-sealed
thread lives in a namespace the browsers' churn never touches.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from tests.realtime.test_chat_ws import (
    BASE_ENV,
    agent_name,
    chat_url,
    mint,
    online,
    recv,
    until,
)
from tests.support.procs import RedisProcess, ServerProcess, start_server
from tests.support.sdk import SdkClient

ORIGIN = "https://shop.example.com"
PER_CLIENT, PER_AGENT, MAX_BYTES = 3, 5, 4096


@pytest.fixture(scope="module")
def server(redis_server: RedisProcess) -> Iterator[ServerProcess]:
    env = {
        **BASE_ENV,
        "VOICE_STORE_URL": redis_server.url.replace("/0", "/5"),
        "VOICE_CHAT_THREADS_PER_CLIENT": str(PER_CLIENT),
        "VOICE_CHAT_THREADS_PER_AGENT": str(PER_AGENT),
        "VOICE_CHAT_THREAD_MAX_BYTES": str(MAX_BYTES),
        "VOICE_TRUSTED_PROXIES": "127.0.0.1/32",  # each test client names its address
    }
    proc = start_server(env)
    yield proc
    proc.stop()


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis(port=redis_server.port, db=5, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def agent(server: ServerProcess) -> AsyncIterator[tuple[str, SdkClient]]:
    name = agent_name()
    sdk = await online(server, name, allowed_origins=[ORIGIN])
    yield name, sdk
    await sdk.close()


async def public_token(server: ServerProcess, name: str, ip: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        minted = await http.get(
            "/chat/token", params={"agent_id": name}, headers={"Origin": ORIGIN, "X-Forwarded-For": ip}
        )
    assert minted.status_code == 200, minted.text
    token: str = minted.json()["token"]
    return token


async def say(
    url: str, sdk: SdkClient, texts: list[str], ip: str = "127.0.0.1", expect_history: bool = False
) -> list[dict[str, str]]:
    """Open the chat, say each text and have the agent answer it; the history it came back with."""
    async with websockets.connect(url, additional_headers={"X-Forwarded-For": ip}) as ws:
        assert (await recv(ws))["event"] == "chat.connected"
        call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
        history: list[dict[str, str]] = []
        for index, text in enumerate(texts):
            await ws.send(json.dumps({"event": "message", "text": text}))
            await sdk.wait_for("chat.message")
            await sdk.send(
                {"event": "bot.reply", "call_id": call_id, "message_id": f"m{index}", "text": "ok"}
            )
            while True:
                frame = await recv(ws)
                if frame["event"] == "chat.history":
                    history = frame["messages"]
                if frame["event"] == "chat.done":
                    break
        if not texts:
            await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "g", "text": "hi"})
            frame = await recv(ws)
            if frame["event"] == "chat.history":
                history = frame["messages"]
            await until(ws, "chat.done")
    await sdk.wait_for("llm.chat.ended")
    return history


async def browser_threads(redis: Redis, name: str) -> set[str]:
    return {key.rsplit("/", 1)[-1] async for key in redis.scan_iter(f"vs:ls:chat:acme/{name}/b/*")}


async def test_one_client_keeps_its_most_recent_threads_only(
    server: ServerProcess, agent: tuple[str, SdkClient], redis: Redis
) -> None:
    name, sdk = agent
    threads = [f"t{i}-{uuid.uuid4().hex[:6]}" for i in range(PER_CLIENT + 3)]
    for thread in threads:
        await say(
            chat_url(server, await public_token(server, name, "10.0.0.1"), thread), sdk, ["hi"], "10.0.0.1"
        )
    assert await browser_threads(redis, name) == set(threads[-PER_CLIENT:])
    # The newest thread is still whole; the oldest is gone and starts over.
    kept = await say(chat_url(server, await public_token(server, name, "10.0.0.1"), threads[-1]), sdk, [])
    assert [m["text"] for m in kept] == ["hi", "ok"]
    gone = await say(chat_url(server, await public_token(server, name, "10.0.0.1"), threads[0]), sdk, [])
    assert gone == []


async def test_many_clients_together_stay_under_the_agent_cap(
    server: ServerProcess, agent: tuple[str, SdkClient], redis: Redis
) -> None:
    name, sdk = agent
    for client in range(PER_AGENT + 2):
        ip = f"10.1.0.{client}"
        url = chat_url(server, await public_token(server, name, ip), f"c{client}")
        await say(url, sdk, ["hello"], ip)
    assert await browser_threads(redis, name) == {f"c{client}" for client in range(2, PER_AGENT + 2)}
    index = await redis.zcard(f"vs:lx:th:acme/{name}/b")
    assert index == PER_AGENT


async def test_a_thread_is_bounded_in_bytes_newest_kept(
    server: ServerProcess, agent: tuple[str, SdkClient], redis: Redis
) -> None:
    name, sdk = agent
    thread = "big-" + uuid.uuid4().hex[:6]
    texts = [f"{i:03d}" + "x" * 900 for i in range(12)]
    await say(chat_url(server, await public_token(server, name, "10.2.0.1"), thread), sdk, texts, "10.2.0.1")
    stored = await redis.lrange(f"vs:ls:chat:acme/{name}/b/{thread}", 0, -1)
    assert sum(len(item.encode()) for item in stored) <= MAX_BYTES
    assert json.loads(stored[-1]) == {"role": "assistant", "text": "ok"}
    assert any(json.loads(item)["text"] == texts[-1] for item in stored), "the newest message stays"


async def test_browser_churn_never_evicts_a_sealed_thread(
    server: ServerProcess, agent: tuple[str, SdkClient]
) -> None:
    name, sdk = agent
    sealed = "user-" + uuid.uuid4().hex[:6]
    await say(chat_url(server, await mint(server, name, metadata={"threadId": sealed})), sdk, ["my order"])
    for client in range(PER_AGENT + 1):
        ip = f"10.3.0.{client}"
        await say(chat_url(server, await public_token(server, name, ip), f"churn{client}"), sdk, ["x"], ip)
    back = await say(chat_url(server, await mint(server, name, metadata={"threadId": sealed})), sdk, [])
    assert [m["text"] for m in back] == ["my order", "ok"]
