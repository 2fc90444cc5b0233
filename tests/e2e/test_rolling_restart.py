"""A rolling restart of two real server processes on one real redis-server, under a steady loop of
mints and chat sessions: no session is refused (issue 14: a draining node kept being handed out,
and 10 of 10 sessions sent there were refused with 1013).

The agent behaves as the SDK does: on a 1012 close it reconnects about a second later, through
the "load balancer" (here: any node whose /readyz answers 200), and registers again. The browser
loop mints at a ready node, opens the chat at the ``server`` it was given, and waits for the
agent's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.procs import RedisProcess, ServerProcess, start_redis, start_server
from tests.support.sdk import SdkClient

pytestmark = pytest.mark.slow
KEY = "sk_test_rolling_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
AGENT = "steady"


def node_env(redis: RedisProcess, name: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": "rolling-restart-secret-0123456789abcdef",
        "VOICE_STORE_URL": redis.url,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_NODE_ID": name,
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_DRAIN_SECONDS": "4",
        "VOICE_AGENT_HEARTBEAT_TTL": "2",
    }


class Fleet:
    """The nodes, by name; a restart replaces a process (on a new port, as a new pod would be)."""

    def __init__(self, redis: RedisProcess) -> None:
        self.redis = redis
        self.nodes = {name: start_server(node_env(redis, name)) for name in ("node-a", "node-b")}
        self.retired: list[ServerProcess] = []

    async def ready(self, http: httpx.AsyncClient) -> list[ServerProcess]:
        ready = []
        for node in list(self.nodes.values()):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(node.url + "/readyz", timeout=1)).status_code == 200:
                    ready.append(node)
        return ready

    async def restart(self, name: str) -> None:
        old = self.nodes[name]
        old.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(old.proc.wait, 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit 30 s after SIGTERM:\n{old.log()[-4000:]}") from None
        self.retired.append(old)
        self.nodes[name] = await asyncio.to_thread(start_server, node_env(self.redis, name))

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    redis = start_redis()
    fleet = Fleet(redis)
    yield fleet
    fleet.stop()
    redis.stop()


async def run_agent(fleet: Fleet, http: httpx.AsyncClient, moves: list[str]) -> None:
    """The SDK's behaviour: connect through the load balancer, register, answer; on a close,
    reconnect after ~1 s (its first backoff step) and register again."""
    while True:
        ready = await fleet.ready(http)
        if not ready:
            await asyncio.sleep(0.2)
            continue
        sdk: SdkClient | None = None
        try:
            sdk = await SdkClient.connect(ready[0].url, KEY)
            if (await sdk.create_agent(AGENT))["event"] == "agent.created":
                moves.append(ready[0].url)
                while True:
                    frame = await sdk.recv(timeout=3600)
                    if frame.get("event") == "chat.message":
                        reply = {
                            "event": "bot.reply",
                            "call_id": frame["call_id"],
                            "text": "ok " + frame["text"],
                        }
                        await sdk.send(reply)
        except (websockets.ConnectionClosed, ConnectionError, OSError, TimeoutError):
            pass
        finally:
            if sdk is not None:
                await sdk.close()
        await asyncio.sleep(1.0)


async def one_session(fleet: Fleet, http: httpx.AsyncClient, index: int) -> str:
    """Mint at a ready node, chat once at the node the mint names: "ok", or what went wrong."""
    ready = await fleet.ready(http)
    if not ready:
        return "no ready node"
    minted = await http.get(
        ready[index % len(ready)].url + "/chat/token", params={"agent_id": AGENT}, headers=AUTH
    )
    if minted.status_code != 200:
        return f"mint {minted.status_code} {minted.json().get('code')}"
    body = minted.json()
    url = body["server"].replace("http", "ws", 1) + f"/chat/ws?token={body['token']}"
    try:
        async with websockets.connect(url) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if first.get("event") != "chat.connected":
                return f"session {first}"
            await ws.send(json.dumps({"event": "message", "text": str(index)}))
            while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10)))["event"] != "chat.done":
                if frame["event"] == "chat.error":
                    return f"chat.error {frame.get('code')}"
            return "ok" if frame["text"] == f"ok {index}" else f"wrong reply {frame['text']!r}"
    except websockets.ConnectionClosed as closed:
        code, reason = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")
        where = next((n for n, p in fleet.nodes.items() if p.url == body["server"]), "a stopped node")
        return f"closed {code} {reason} (session on {where}, minted at {ready[index % len(ready)].url})"


async def test_a_rolling_restart_refuses_no_session(fleet: Fleet) -> None:
    outcomes: Counter[str] = Counter()
    moves: list[str] = []
    async with httpx.AsyncClient(timeout=20) as http:
        agent = asyncio.create_task(run_agent(fleet, http, moves))
        async with asyncio.timeout(30):
            while not moves:
                await asyncio.sleep(0.05)
        stop = asyncio.Event()

        async def browsers(worker: int) -> None:
            index = worker
            while not stop.is_set():
                outcomes[await one_session(fleet, http, index)] += 1
                index += 2
                await asyncio.sleep(0.05)

        loops = [asyncio.create_task(browsers(w)) for w in range(2)]
        await asyncio.sleep(1.0)
        for name in ("node-a", "node-b"):  # each node in turn, as a rolling update does
            await fleet.restart(name)
            await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*loops)
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
    assert outcomes["ok"] >= 20, outcomes
    if set(outcomes) != {"ok"}:
        logs = [
            "\n".join(
                line[:300]
                for line in node.log().splitlines()[-60:]
                if "readyz" not in line and "/token" not in line
            )
            for node in fleet.retired
        ]
        raise AssertionError(f"{outcomes}\n" + "\n---\n".join(logs))
    assert len(moves) >= 2, moves  # the agent did move off the draining nodes
