"""Several real server processes on one real redis-server (CONTRACT §8)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from tests.support.procs import RedisProcess, ServerProcess, start_redis, start_server
from tests.support.sdk import SdkClient

pytestmark = pytest.mark.slow
KEY = "sk_test_multi_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def node_env(redis: RedisProcess, name: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": "shared-secret-0123456789abcdef01",
        "VOICE_STORE_URL": redis.url,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_NODE_ID": name,
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_MAX_SESSIONS": "5000",
        "VOICE_MAX_SESSIONS_PER_ORG": "5000",
        "VOICE_AGENT_HEARTBEAT_TTL": "2",
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[RedisProcess, list[ServerProcess]]]:
    redis = start_redis()
    nodes = [start_server(node_env(redis, f"node-{name}")) for name in "abc"]
    yield redis, nodes
    for node in nodes:
        node.stop()
    redis.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=200)) as client:
        yield client


async def consume(node: ServerProcess, token: str) -> str:
    """Open a chat session with ``token`` on ``node``: "ok", or the refusal's close reason."""
    async with websockets.connect(node.ws_url + f"/chat/ws?token={token}") as ws:
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if first.get("event") == "error":  # a refusal: its error frame, then the close
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.reason if closed.rcvd else "closed"
        return "ok" if first.get("event") == "chat.connected" else str(first)


async def test_a_token_is_consumed_once_across_nodes(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    """1000 tokens, each presented at the same instant on two different nodes: one success each."""
    _, nodes = cluster
    a, b, c = nodes
    agents = []
    for node in nodes:  # an agent on every node, so each node can serve a session locally
        sdk = await SdkClient.connect(node.url, KEY)
        await sdk.create_agent(f"racer-{node.port}")
        agents.append(sdk)
    outcomes: list[list[str]] = []
    semaphore = asyncio.Semaphore(25)

    async def race(index: int) -> None:
        owner = nodes[index % 3]
        others = [n for n in nodes if n is not owner]
        async with semaphore:
            minted = await http.get(
                f"{nodes[(index + 1) % 3].url}/chat/token",
                params={"agent_id": f"racer-{owner.port}"},
                headers=AUTH,
            )
            token = minted.json()["token"]
            # Both on nodes that do not hold the agent half of the time, the owner the other half.
            first, second = (owner, others[0]) if index % 2 else (others[0], others[1])
            outcomes.append(list(await asyncio.gather(consume(first, token), consume(second, token))))

    started = time.monotonic()
    await asyncio.gather(*(race(i) for i in range(1000)))
    assert len(outcomes) == 1000
    doubles = [o for o in outcomes if o.count("ok") != 1]
    assert not doubles, doubles[:5]
    assert all(set(o) == {"ok", "token_spent"} for o in outcomes), [
        o for o in outcomes if "token_spent" not in o
    ][:5]
    print(f"1000 races on 3 nodes in {time.monotonic() - started:.1f}s")
    for sdk in agents:
        await sdk.close()
    del a, b, c


async def test_mint_on_any_node_answers_the_agents_node(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    _, (a, b, c) = cluster
    sdk = await SdkClient.connect(a.url, KEY)
    await sdk.create_agent("placed")
    for node in (a, b, c):
        response = await http.get(f"{node.url}/webrtc/token", params={"agent_id": "placed"}, headers=AUTH)
        assert response.status_code == 200 and response.json()["server"] == a.url
    await sdk.close()


async def test_agent_in_use_holds_across_nodes(cluster: tuple[RedisProcess, list[ServerProcess]]) -> None:
    _, (a, b, _c) = cluster
    first = await SdkClient.connect(a.url, KEY)
    await first.create_agent("exclusive")
    second = await SdkClient.connect(b.url, KEY)
    await second.send({"event": "agent.create", "agent_id": "exclusive"})
    refused = await second.recv()
    assert refused["code"] == "AGENT_IN_USE"
    # The hints the SDK's conflict retry reads (issue 18 item 9): a live holder, retry slowly.
    assert refused["holder_alive"] is True and refused["retry_after_s"] == 30, refused
    await first.close()
    await second.close()


async def test_agent_in_use_says_when_the_holders_node_is_dead(
    cluster: tuple[RedisProcess, list[ServerProcess]],
) -> None:
    """A crashed node's agent records outlive it by up to the heartbeat TTL; AGENT_IN_USE in
    that window says holder_alive: false (the SDK then keeps retrying with a fresh budget), and
    the pending registration takes over when the record expires."""
    redis, _ = cluster
    env = {**node_env(redis, "node-doomed"), "VOICE_AGENT_HEARTBEAT_TTL": "10"}
    doomed = start_server(env)
    heir = start_server({**env, "VOICE_NODE_ID": "node-heir"})
    try:
        holder = await SdkClient.connect(doomed.url, KEY)
        await holder.create_agent("orphan")
        doomed.kill()
        await asyncio.sleep(3.5)  # past the node's presence (three missed beats), within the record's TTL
        sdk = await SdkClient.connect(heir.url, KEY)
        await sdk.send({"event": "agent.create", "agent_id": "orphan"})
        refused = await sdk.recv()
        assert refused["code"] == "AGENT_IN_USE", refused
        assert refused["holder_alive"] is False and refused["retry_after_s"] == 10, refused
        assert (await sdk.wait_for("agent.created", timeout=15))["agent_id"] == "orphan"
        await sdk.close()
    finally:
        heir.stop()


async def test_a_session_on_the_wrong_node_is_relayed_to_the_agent(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    """The browser lands on B while the agent's socket is on A: the conversation still works."""
    _, (a, b, _c) = cluster
    sdk = await SdkClient.connect(a.url, KEY)
    await sdk.create_agent("relayed")
    token = (await http.get(f"{a.url}/chat/token", params={"agent_id": "relayed"}, headers=AUTH)).json()[
        "token"
    ]
    async with websockets.connect(b.ws_url + f"/chat/ws?token={token}") as chat:
        assert json.loads(await asyncio.wait_for(chat.recv(), 10))["event"] == "chat.connected"
        started = await sdk.wait_for("llm.chat.started", "call.started")
        call_id = started["call_id"]
        await chat.send(json.dumps({"event": "message", "text": "hello from B"}))
        message = await sdk.wait_for("chat.message")
        assert message["text"] == "hello from B" and message["call_id"] == call_id
        await sdk.send({"event": "bot.reply", "call_id": call_id, "message_id": "m1", "text": "hi, relayed"})
        while True:
            frame = json.loads(await asyncio.wait_for(chat.recv(), 10))
            if frame["event"] == "chat.done":
                break
        assert frame["text"] == "hi, relayed"
    ended = await sdk.wait_for("call.ended", "llm.chat.ended")
    assert ended["call_id"] == call_id
    await sdk.close()


async def test_session_commands_reach_a_relayed_session(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    """Issue 17 item 2 across nodes: the agent on A pauses, speaks as the human into, and
    resumes a chat session that lives on B (pinecall/sdk agent.pause(id) / sendMessage)."""
    _, (a, b, _c) = cluster
    sdk = await SdkClient.connect(a.url, KEY)
    await sdk.create_agent("steered")
    token = (await http.get(f"{a.url}/chat/token", params={"agent_id": "steered"}, headers=AUTH)).json()[
        "token"
    ]
    async with websockets.connect(b.ws_url + f"/chat/ws?token={token}") as chat:
        assert json.loads(await asyncio.wait_for(chat.recv(), 10))["event"] == "chat.connected"
        call_id = (await sdk.wait_for("llm.chat.started"))["call_id"]
        await sdk.send({"event": "session.pause", "agent_id": "steered", "session_id": call_id})
        assert (await sdk.wait_for("session.paused"))["session_id"] == call_id
        await chat.send(json.dumps({"event": "message", "text": "hello from B"}))
        assert (await sdk.wait_for("chat.message"))["paused"] is True
        await sdk.send(
            {"event": "session.send", "agent_id": "steered", "session_id": call_id, "text": "a human"}
        )
        assert (await sdk.wait_for("session.sent"))["session_id"] == call_id
        while (frame := json.loads(await asyncio.wait_for(chat.recv(), 10)))["event"] != "chat.done":
            pass
        assert frame["text"] == "a human"
        await sdk.send({"event": "session.resume", "agent_id": "steered", "session_id": "chat-nowhere"})
        assert (await sdk.wait_for("session.resumed"))["code"] == "SESSION_NOT_FOUND"
    await sdk.close()


async def test_a_session_for_a_vanished_owner_is_refused_cleanly(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    _, (a, b, _c) = cluster
    sdk = await SdkClient.connect(a.url, KEY)
    await sdk.create_agent("vanishing")
    token = (await http.get(f"{a.url}/chat/token", params={"agent_id": "vanishing"}, headers=AUTH)).json()[
        "token"
    ]
    await sdk.close()
    await asyncio.sleep(0.3)  # the close reaches node A
    assert await consume(b, token) == "agent_not_online"


async def test_a_session_for_an_agent_on_a_crashed_node_is_refused_not_left_open(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    """Found by scripts/chaos (issue 13): after a node's SIGKILL its agents' records live on for
    up to the heartbeat TTL. A session for such an agent on another node used to open (the
    browser got chat.connected) with llm.chat.started published to nobody: a conversation no
    agent would ever answer. Now the undeliverable start refuses it, as store_unavailable (try
    again: the record names a node that is not listening, as during a Redis failover)."""
    redis, (_a, b, _c) = cluster
    doomed = start_server({**node_env(redis, "node-crashing"), "VOICE_AGENT_HEARTBEAT_TTL": "10"})
    sdk = await SdkClient.connect(doomed.url, KEY)
    await sdk.create_agent("stranded")
    tokens = [
        (await http.get(f"{b.url}/chat/token", params={"agent_id": "stranded"}, headers=AUTH)).json()["token"]
        for _ in range(3)
    ]
    doomed.kill()  # SIGKILL: the record stays in the store for up to 10 s
    await asyncio.sleep(0.3)  # Redis has seen the dead node's sockets close
    assert [await consume(b, token) for token in tokens] == ["store_unavailable"] * 3
    minted = await http.get(f"{b.url}/chat/token", params={"agent_id": "stranded"}, headers=AUTH)
    assert minted.status_code == 200  # the record is still there: the mint cannot know yet
    assert await consume(b, minted.json()["token"]) == "store_unavailable"
    with contextlib.suppress(Exception):
        await sdk.close()


async def test_a_dead_node_takes_its_agents_offline_and_they_move(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    redis, (a, b, _c) = cluster
    doomed = start_server(node_env(redis, "node-doomed"))
    sdk = await SdkClient.connect(doomed.url, KEY)
    await sdk.create_agent("survivor")
    assert (
        await http.get(f"{b.url}/chat/token", params={"agent_id": "survivor"}, headers=AUTH)
    ).status_code == 200
    doomed.kill()  # SIGKILL: no goodbye, only the heartbeat TTL (2 s here) tells
    killed = time.monotonic()
    while True:
        response = await http.get(f"{b.url}/chat/token", params={"agent_id": "survivor"}, headers=AUTH)
        if response.status_code == 404:
            break
        assert time.monotonic() - killed < 6, "the dead node's agent is still online"
        await asyncio.sleep(0.1)
    moved = await SdkClient.connect(a.url, KEY)
    assert (await moved.create_agent("survivor"))["event"] == "agent.created"
    response = await http.get(f"{b.url}/chat/token", params={"agent_id": "survivor"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["server"] == a.url
    await moved.close()


async def test_a_revoked_key_fails_on_every_node_within_a_second(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    import subprocess
    import sys

    from tests.support.procs import ROOT

    redis, nodes = cluster
    env = {"VOICE_STORE_URL": redis.url, "PATH": "/usr/bin:/bin"}
    secret = subprocess.run(
        [sys.executable, "-m", "server", "keys", "create", "--org", "acme"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sdk = await SdkClient.connect(nodes[0].url, KEY)
    await sdk.create_agent("revocable")
    auth = {"Authorization": f"Bearer {secret}"}
    for node in nodes:  # warm every node's cache
        assert (
            await http.get(f"{node.url}/chat/token", params={"agent_id": "revocable"}, headers=auth)
        ).status_code == 200
    key_id = next(
        line.split()[0]
        for line in subprocess.run(
            [sys.executable, "-m", "server", "keys", "list"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        if line.split("\t")[1] == "acme"
    )
    subprocess.run([sys.executable, "-m", "server", "keys", "revoke", key_id], cwd=ROOT, env=env, check=True)
    revoked = time.monotonic()
    for node in nodes:
        while (
            await http.get(f"{node.url}/chat/token", params={"agent_id": "revocable"}, headers=auth)
        ).status_code != 401:
            assert time.monotonic() - revoked < 1.0, f"{node.url} still accepts a revoked key"
            await asyncio.sleep(0.02)
    await sdk.close()


async def test_a_restarted_node_takes_its_agents_back_at_once(
    cluster: tuple[RedisProcess, list[ServerProcess]],
) -> None:
    """Same node id after a crash (a StatefulSet pod): the old run's records are not AGENT_IN_USE."""
    redis, _ = cluster
    env = {**node_env(redis, "node-phoenix"), "VOICE_AGENT_HEARTBEAT_TTL": "30"}
    first = start_server(env)
    sdk = await SdkClient.connect(first.url, KEY)
    await sdk.create_agent("phoenix")
    first.kill()
    second = start_server(env)
    try:
        again = await SdkClient.connect(second.url, KEY)
        created = await again.create_agent("phoenix")
        assert created["event"] == "agent.created", created
        await again.close()
    finally:
        second.stop()


async def test_a_relayed_session_ends_when_its_agent_goes_offline(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    _, (a, b, _c) = cluster
    sdk = await SdkClient.connect(a.url, KEY)
    await sdk.create_agent("leaving")
    token = (await http.get(f"{a.url}/chat/token", params={"agent_id": "leaving"}, headers=AUTH)).json()[
        "token"
    ]
    async with websockets.connect(b.ws_url + f"/chat/ws?token={token}") as chat:
        assert json.loads(await asyncio.wait_for(chat.recv(), 10))["event"] == "chat.connected"
        await sdk.close()
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(chat.recv(), 5)


async def test_a_revoke_closes_the_keys_sdk_sockets_on_every_node(
    cluster: tuple[RedisProcess, list[ServerProcess]], http: httpx.AsyncClient
) -> None:
    """Issue 15: a /client socket opened before a revoke is closed with INVALID_API_KEY
    (1008, reason invalid_api_key) on whichever node holds it, and its public agent goes
    offline at once: no mint for it, no new registration through it."""
    import subprocess
    import sys

    from tests.support.procs import ROOT

    redis, nodes = cluster
    env = {"VOICE_STORE_URL": redis.url, "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "server", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    secret = run("keys", "create", "--org", "revoked-org", "--label", "to-revoke").strip().splitlines()[0]
    key_id = next(
        line.split("\t")[0] for line in run("keys", "list").splitlines() if "\trevoked-org\t" in line
    )
    sdk = await SdkClient.connect(nodes[1].url, secret)
    created = await sdk.create_agent("public-one", allowed_origins=["https://demo.example.com"])
    assert created["event"] == "agent.created"
    origin = {"Origin": "https://demo.example.com"}
    mint = await http.get(f"{nodes[0].url}/chat/token", params={"agent_id": "public-one"}, headers=origin)
    assert mint.status_code == 200

    run("keys", "revoke", key_id)  # the CLI, against the store: no node is asked directly
    frame = await sdk.recv(timeout=5)
    assert frame["event"] == "error" and frame["code"] == "INVALID_API_KEY"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await sdk.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "invalid_api_key")
    for node in nodes:  # the agent is offline everywhere (the cache lasts at most a second)
        deadline = time.monotonic() + 3
        while True:
            refused = await http.get(
                f"{node.url}/chat/token", params={"agent_id": "public-one"}, headers=origin
            )
            if refused.status_code == 404:
                break
            assert time.monotonic() < deadline, f"{node.url} still mints for the revoked key's agent"
            await asyncio.sleep(0.05)
    with pytest.raises(ConnectionError):
        await SdkClient.connect(nodes[1].url, secret)


async def test_a_second_process_with_the_same_node_id_is_refused_at_start(
    cluster: tuple[RedisProcess, list[ServerProcess]],
) -> None:
    """Two live processes under one VOICE_NODE_ID took each other's agents for their own, which
    silently defeated AGENT_IN_USE; the second now stops at start-up, naming the variable."""
    redis, _ = cluster
    env = node_env(redis, "node-twin")
    first = start_server(env)
    try:
        with pytest.raises(RuntimeError, match="server failed to start") as refused:
            start_server(env)
        assert "VOICE_NODE_ID 'node-twin' is in use by another running node" in str(refused.value)
        async with httpx.AsyncClient() as http:  # the first is untouched
            assert (await http.get(first.url + "/readyz")).status_code == 200
    finally:
        first.stop()
    # A clean stop releases the id: the same id starts again, and after a crash too.
    again = start_server(env)
    again.kill()
    started = time.monotonic()
    after_crash = start_server(env)
    after_crash.stop()
    print(f"restart after a crash took {time.monotonic() - started:.1f} s")
