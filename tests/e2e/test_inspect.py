"""The inspection API (issue 10) on real server processes: the memory store in dev mode, and two
nodes on one real redis-server with admin keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.support.procs import RedisProcess, ServerProcess, start_redis, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_inspect_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = "admin-" + "a" * 40
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
SECRET = "inspect-secret-0123456789abcdef01"


@pytest.fixture(scope="module")
def dev() -> Iterator[ServerProcess]:
    """``serve --dev``: inspection on, no admin key, the mock agent ``demo`` in org acme."""
    server = start_server({"VOICE_API_KEYS": f"acme:{KEY}", "VOICE_RATE_LIMIT_KEY": "0"}, ["--dev"])
    yield server
    server.stop()


def node_env(redis: RedisProcess, name: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": SECRET,
        "VOICE_STORE_URL": redis.url,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_NODE_ID": name,
        "VOICE_INSPECT": "1",
        "VOICE_ADMIN_KEYS": f"{ADMIN},second-{'b' * 40}",
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_MOCK_AGENT": "demo",
        "VOICE_MOCK_AGENT_ORG": "acme",
    }


@pytest.fixture(scope="module")
def pair() -> Iterator[list[ServerProcess]]:
    """Two nodes on one real redis-server, inspection on with admin keys."""
    redis = start_redis()
    nodes = [start_server(node_env(redis, f"node-{n}")) for n in "ab"]
    yield nodes
    for node in nodes:
        node.stop()
    redis.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


async def mint(
    http: httpx.AsyncClient, server: ServerProcess, channel: str = "chat", agent: str = "demo"
) -> str:
    answer = await http.get(f"{server.url}/{channel}/token", params={"agent_id": agent}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


async def chat(server: ServerProcess, token: str, text: str | None = "hello") -> dict[str, Any]:
    """Open a chat, say ``text`` and wait for the mock agent's answer; the chat.connected frame."""
    async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as ws:
        connected: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if text is not None:
            await ws.send(json.dumps({"event": "message", "text": text}))
            echoed = False  # the mock agent's greeting streams first: wait for the echo's chat.done
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                echoed = echoed or text in str(frame.get("text", ""))
                if echoed and frame.get("event") == "chat.done":
                    break
    return connected


async def get(http: httpx.AsyncClient, server: ServerProcess, path: str, **params: Any) -> Any:
    answer = await http.get(server.url + path, params=params, headers=ADMIN_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def eventually(probe: Any, timeout: float = 5.0) -> Any:
    """``await probe()`` until it is truthy (another node's journal write takes a moment)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.05)


# -- on, off, auth -------------------------------------------------------------------------------
async def test_health_names_the_node_and_store(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    body = await get(http, dev, "/_voice/health")
    assert body["inspect"] is True and body["store"] == "memory" and body["node"]


async def test_off_the_paths_answer_like_unknown_routes(http: httpx.AsyncClient) -> None:
    server = start_server({"VOICE_TOKEN_SECRET": SECRET, "VOICE_API_KEYS": f"acme:{KEY}"})
    try:
        unknown = await http.get(server.url + "/no/such/route")
        for path in ("/_voice/health", "/_voice/journal", "/_voice/tokens", "/_voice/sessions/x"):
            answer = await http.get(server.url + path, headers=ADMIN_AUTH)
            assert answer.status_code == 404
            assert answer.json()["code"] == unknown.json()["code"] == "not_found"
        assert (await http.post(server.url + "/_voice/reset")).status_code == 404
    finally:
        server.stop()


async def test_outside_dev_an_admin_key_is_required(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    a, _ = pair
    missing = await http.get(a.url + "/_voice/tokens")
    assert (missing.status_code, missing.json()["code"]) == (401, "admin_key_required")
    wrong = await http.get(a.url + "/_voice/tokens", headers={"Authorization": "Bearer " + "x" * 40})
    assert (wrong.status_code, wrong.json()["code"]) == (403, "invalid_admin_key")
    org_key = await http.get(a.url + "/_voice/journal", headers=AUTH)  # an org's key is not an admin key
    assert (org_key.status_code, org_key.json()["code"]) == (403, "invalid_admin_key")
    second = await http.get(a.url + "/_voice/health", headers={"Authorization": f"Bearer second-{'b' * 40}"})
    assert second.status_code == 200 and second.json()["store"] == "redis"


def test_inspection_outside_dev_without_admin_keys_does_not_start() -> None:
    with pytest.raises(RuntimeError, match="VOICE_ADMIN_KEYS"):
        start_server({"VOICE_TOKEN_SECRET": SECRET, "VOICE_INSPECT": "1"})


# -- journal and tokens --------------------------------------------------------------------------
async def test_a_mint_and_its_consume_are_in_the_ledger(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    token = await mint(http, dev)
    await chat(dev, token)
    rows = (await get(http, dev, "/_voice/tokens", agent_id="demo", channel="chat"))["items"]
    row = rows[-1]
    assert row["state"] == "consumed" and row["channel"] == "chat" and row["agents"] == ["demo"]
    assert (
        row["org"] == "acme"
        and row["consumed_by"].startswith("chat-")
        and row["consumed_at"] >= row["minted_at"]
    )
    assert token not in json.dumps(rows) and token.split(".")[-1] not in json.dumps(rows)
    consumes = (await get(http, dev, "/_voice/journal", kind="consume."))["items"]
    assert next(e for e in consumes if e.get("jti") == row["jti"])["session_id"] == row["consumed_by"]
    session = await get(http, dev, f"/_voice/sessions/{row['consumed_by']}")
    assert session["transport"] == "chat" and session["agent_id"] == "demo"
    directions = {(f["direction"], f["event"]) for f in session["timeline"]}
    assert ("browser->server", "message") in directions
    assert ("server->agent", "chat.message") in directions
    assert ("agent->server", "bot.reply") in directions, session["timeline"]
    assert ("server->browser", "chat.done") in directions


async def test_refusals_are_journaled_with_their_code(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    token = await mint(http, dev)
    await chat(dev, token, text=None)
    async with websockets.connect(dev.ws_url + f"/chat/ws?token={token}") as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    await http.get(f"{dev.url}/chat/token", params={"agent_id": "nobody"}, headers=AUTH)
    refused = (await get(http, dev, "/_voice/journal", kind="consume.refused"))["items"]
    assert refused[-1]["code"] == "token_spent" and refused[-1]["channel"] == "chat"
    mints = (await get(http, dev, "/_voice/journal", kind="mint.refused", agent_id="nobody"))["items"]
    assert mints[-1]["code"] == "agent_not_online" and mints[-1]["status"] == 404
    unused = await mint(http, dev, "webrtc")
    issued = (await get(http, dev, "/_voice/tokens", state="issued", channel="webrtc"))["items"]
    assert issued[-1]["state"] == "issued" and issued[-1]["consumed_by"] is None
    assert unused not in json.dumps(issued)


async def test_pages_follow_after_and_limit(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    for _ in range(5):
        await mint(http, dev, "webrtc")
    first = await get(http, dev, "/_voice/journal", kind="mint.allowed", limit=2)
    assert len(first["items"]) == 2 and first["next_after"] == first["items"][-1]["seq"]
    rest = await get(http, dev, "/_voice/journal", kind="mint.allowed", after=first["next_after"], limit=1000)
    assert rest["next_after"] is None
    seqs = [e["seq"] for e in first["items"] + rest["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_client_connect_and_register_are_journaled(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    sdk = await SdkClient.connect(dev.url, KEY)
    try:
        await sdk.create_agent("watched")
    finally:
        await sdk.close()
    registered = (await get(http, dev, "/_voice/journal", kind="client.", agent_id="watched"))["items"]
    assert registered[-1]["kind"] == "client.register" and registered[-1]["org"] == "acme"
    connects = (await get(http, dev, "/_voice/journal", kind="client.connect"))["items"]
    assert connects and connects[-1]["org"] == "acme"


async def test_the_stream_replays_then_follows(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    before = (await get(http, dev, "/_voice/journal", limit=1000))["items"]
    after = before[-1]["seq"] if before else 0
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async with http.stream("GET", dev.url + "/_voice/journal/stream", params={"after": after}) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if got[-1]["kind"] == "mint.allowed":
                        return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    await mint(http, dev, "webrtc")
    await asyncio.wait_for(reader, 10)
    assert got[-1]["kind"] == "mint.allowed" and got[-1]["seq"] > after


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/_voice/tokens", {"state": "nonsense"}),
        ("/_voice/tokens", {"channel": "fax"}),
        ("/_voice/tokens", {"limit": "0"}),
        ("/_voice/tokens", {"limit": "1001"}),
        ("/_voice/journal", {"after": "-1"}),
        ("/_voice/journal", {"after": "abc"}),
        ("/_voice/journal", {"surprise": "1"}),
        ("/_voice/journal/stream", {"after": "x"}),
        ("/_voice/sessions", {"state": "zombie"}),
        ("/_voice/health", {"x": "1"}),
    ],
)
async def test_bad_queries_are_invalid_requests(
    dev: ServerProcess, http: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    answer = await http.get(dev.url + path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_request" and answer.json()["detail"]


async def test_an_unknown_session_is_session_not_found(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    answer = await http.get(dev.url + "/_voice/sessions/chat-nope")
    assert (answer.status_code, answer.json()["code"]) == (404, "session_not_found")


# -- two nodes on one Redis ----------------------------------------------------------------------
async def test_every_node_answers_for_the_deployment(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    a, b = pair
    token = await mint(http, a)
    connected = await chat(b, token)
    assert connected["event"] == "chat.connected"

    async def consumed_on_b() -> list[dict[str, Any]]:
        rows = (await get(http, a, "/_voice/tokens", channel="chat", state="consumed"))["items"]
        return [r for r in rows if r["node"] == "node-a"]

    rows = await eventually(consumed_on_b)
    assert rows, "the consume on node b never reached node a's ledger"
    call_id = rows[-1]["consumed_by"]
    session = await eventually(lambda: get(http, b, f"/_voice/sessions/{call_id}"))
    assert session["node"] == "node-b" and session["state"] == "ended"
    listed = (await get(http, a, "/_voice/sessions", agent_id="demo", state="ended"))["items"]
    assert call_id in [s["call_id"] for s in listed]
    journal_a = (await get(http, a, "/_voice/journal", limit=1000))["items"]
    journal_b = (await get(http, b, "/_voice/journal", limit=1000))["items"]
    assert [e["seq"] for e in journal_a] == [e["seq"] for e in journal_b]
    assert {e["node"] for e in journal_a} >= {"node-a", "node-b"}


# -- reset -------------------------------------------------------------------------------------
async def post(http: httpx.AsyncClient, server: ServerProcess, path: str, body: Any = None) -> Any:
    answer = await http.post(server.url + path, json=body, headers=ADMIN_AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def close_reason(ws: websockets.ClientConnection, timeout: float = 10.0) -> str:
    """Read until the server closes the socket; its close reason."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    rcvd = closed.value.rcvd
    return rcvd.reason if rcvd is not None else ""


async def test_reset_ends_live_sessions_and_forgets_tokens(
    dev: ServerProcess, http: httpx.AsyncClient
) -> None:
    unused = await mint(http, dev)
    live = await mint(http, dev)
    async with websockets.connect(dev.ws_url + f"/chat/ws?token={live}") as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "chat.connected"
        answer = await post(http, dev, "/_voice/reset")
        assert answer["reset"] is True
        assert {"tokens", "sessions", "journal", "timelines", "rate_limits", "whatsapp"} <= set(
            answer["families"]
        )
        assert "agents" not in answer["families"]
        await close_reason(ws)
    assert (await get(http, dev, "/_voice/tokens"))["items"] == []
    ended = (await get(http, dev, "/_voice/journal", kind="session.end"))["items"]
    assert [e["reason"] for e in ended] == ["reset"]
    async with websockets.connect(dev.ws_url + f"/chat/ws?token={unused}") as ws:
        assert await close_reason(ws) == "token_spent"  # its id is gone: it can never be used
    assert (await get(http, dev, "/_voice/health"))["inspect"] is True  # agents stayed:
    await mint(http, dev)


async def test_reset_with_agents_takes_them_offline(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    sdk = await SdkClient.connect(dev.url, KEY)
    await sdk.create_agent("resettable")
    await mint(http, dev, agent="resettable")
    answer = await post(http, dev, "/_voice/reset", {"agents": True})
    assert "agents" in answer["families"]
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await sdk.recv()
    gone = await http.get(f"{dev.url}/chat/token", params={"agent_id": "resettable"}, headers=AUTH)
    assert gone.json()["code"] == "agent_not_online"


@pytest.mark.parametrize("body", [{"agents": "yes"}, {"surprise": 1}, [1], "reset", 3])
async def test_bad_reset_bodies_are_invalid_requests(
    dev: ServerProcess, http: httpx.AsyncClient, body: Any
) -> None:
    answer = await http.post(dev.url + "/_voice/reset", json=body)
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")
    broken = await http.post(dev.url + "/_voice/reset", content=b"{not json")
    assert (broken.status_code, broken.json()["code"]) == (400, "invalid_request")


@pytest.mark.parametrize("raw", [b"\x0c", b" \x0b\n", b" \x1c "], ids=["form-feed", "vtab", "file-sep"])
async def test_a_body_of_non_json_whitespace_is_bad_json_not_empty(
    dev: ServerProcess, http: httpx.AsyncClient, raw: bytes
) -> None:
    """Found by fuzzing: Python's bytes.strip() takes \\x0c for whitespace, JSON does not; such a
    body reset everything as if it were empty."""
    for path in ("/_voice/reset", "/_voice/clock", "/_voice/faults"):
        answer = await http.post(dev.url + path, content=raw, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request"), path
    blank = await http.post(dev.url + "/_voice/reset", content=b" \r\n\t")  # JSON whitespace: empty
    assert blank.status_code == 200 and blank.json()["reset"] is True


async def test_reset_on_one_node_ends_sessions_on_the_other(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    a, b = pair
    token = await mint(http, b)
    async with websockets.connect(b.ws_url + f"/chat/ws?token={token}") as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "chat.connected"

        async def consumed() -> list[dict[str, Any]]:
            return list((await get(http, a, "/_voice/tokens", state="consumed"))["items"])

        # Node b's journal batch has reached the store: the reset then clears it. (An entry still
        # in a node's unflushed batch when the reset lands is written after it: README, limits.)
        assert await eventually(consumed)
        await post(http, a, "/_voice/reset")
        await close_reason(ws)

    async def ended() -> list[dict[str, Any]]:
        return list((await get(http, a, "/_voice/journal", kind="session.end"))["items"])

    entries = await eventually(ended)
    assert [(e["reason"], e["node"]) for e in entries] == [("reset", "node-b")]
    assert (await get(http, b, "/_voice/tokens"))["items"] == []


# -- clock -------------------------------------------------------------------------------------
async def test_an_advance_expires_a_token_without_sleeping(
    dev: ServerProcess, http: httpx.AsyncClient
) -> None:
    token = await mint(http, dev)
    try:
        moved = await post(http, dev, "/_voice/clock", {"advance_seconds": 120})
        assert moved["offset_seconds"] == 120 and moved["now"] > 0
        row = (await get(http, dev, "/_voice/tokens", state="expired"))["items"][-1]
        assert row["state"] == "expired"
        async with websockets.connect(dev.ws_url + f"/chat/ws?token={token}") as ws:
            assert await close_reason(ws) == "token_expired"
        refused = (await get(http, dev, "/_voice/journal", kind="consume.refused"))["items"]
        assert refused[-1]["code"] == "token_expired"
        fresh = await mint(http, dev)  # minted on the moved clock: valid on it
        assert (await chat(dev, fresh, text=None))["event"] == "chat.connected"
    finally:
        back = await post(http, dev, "/_voice/clock", {"reset": True})
    assert back["offset_seconds"] == 0
    assert (await get(http, dev, "/_voice/clock"))["offset_seconds"] == 0


async def test_an_advance_ends_an_idle_session(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    token = await mint(http, dev)
    try:
        async with websockets.connect(dev.ws_url + f"/chat/ws?token={token}") as ws:
            connected = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await post(http, dev, "/_voice/clock", {"advance_seconds": 301})  # VOICE_SESSION_IDLE_SECONDS 300
            await close_reason(ws, timeout=5)
    finally:
        await post(http, dev, "/_voice/clock", {"reset": True})
    rows = (await get(http, dev, "/_voice/tokens", channel="chat", state="consumed"))["items"]
    call_id = rows[-1]["consumed_by"]
    session = await get(http, dev, f"/_voice/sessions/{call_id}")
    assert connected["event"] == "chat.connected"
    assert (session["state"], session["end_reason"]) == ("ended", "idle_timeout")


async def test_the_clock_moves_on_every_node(pair: list[ServerProcess], http: httpx.AsyncClient) -> None:
    a, b = pair
    try:
        await post(http, a, "/_voice/clock", {"advance_seconds": 30})
        await post(http, b, "/_voice/clock", {"advance_seconds": 30})
        seen = await get(http, a, "/_voice/clock")
        assert seen["offset_seconds"] == 60
        assert (await get(http, b, "/_voice/clock"))["offset_seconds"] == 60
    finally:
        await post(http, a, "/_voice/clock", {"reset": True})
    assert (await get(http, b, "/_voice/clock"))["offset_seconds"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"advance_seconds": -1},
        {"advance_seconds": 0},
        {"advance_seconds": "60"},
        {"advance_seconds": True},
        {"advance_seconds": 1e12},
        {"reset": False},
        {"reset": True, "advance_seconds": 1},
        {"when": "now"},
        [60],
    ],
)
async def test_bad_clock_bodies_are_invalid_requests(
    dev: ServerProcess, http: httpx.AsyncClient, body: Any
) -> None:
    answer = await http.post(dev.url + "/_voice/clock", json=body)
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request"), answer.text


# -- faults ------------------------------------------------------------------------------------
async def add_fault(http: httpx.AsyncClient, server: ServerProcess, body: dict[str, Any]) -> Any:
    answer = await http.post(server.url + "/_voice/faults", json=body, headers=ADMIN_AUTH)
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.fixture
async def no_faults(dev: ServerProcess, http: httpx.AsyncClient) -> AsyncIterator[None]:
    yield
    await http.delete(dev.url + "/_voice/faults")
    await http.post(dev.url + "/_voice/clock", json={"reset": True})


async def test_a_mint_fault_refuses_as_told_then_ends(
    dev: ServerProcess, http: httpx.AsyncClient, no_faults: None
) -> None:
    item = await add_fault(
        http,
        dev,
        {"target": "mint", "kind": "fail", "channel": "chat", "status": 503, "code": "boom", "count": 1},
    )
    assert (item["target"], item["kind"], item["remaining"], item["applied"]) == ("mint", "fail", 1, 0)
    assert item["id"] in [f["id"] for f in (await get(http, dev, "/_voice/faults"))["items"]]
    await mint(http, dev, "webrtc")  # another channel: not covered
    refused = await http.get(f"{dev.url}/chat/token", params={"agent_id": "demo"}, headers=AUTH)
    assert (refused.status_code, refused.json()["code"]) == (503, "boom")
    await mint(http, dev)  # its one application is spent
    applied = (await get(http, dev, "/_voice/journal", kind="fault.applied"))["items"]
    assert (applied[-1]["fault_id"], applied[-1]["target"], applied[-1]["fault_kind"]) == (
        item["id"],
        "mint",
        "fail",
    )
    assert (await get(http, dev, "/_voice/journal", kind="mint.refused"))["items"][-1]["code"] == "boom"
    assert await eventually(lambda: _no_faults(http, dev))


async def _no_faults(http: httpx.AsyncClient, server: ServerProcess) -> bool:
    return not (await get(http, server, "/_voice/faults"))["items"]


async def test_a_consume_fault_expires_with_the_clock(
    dev: ServerProcess, http: httpx.AsyncClient, no_faults: None
) -> None:
    await add_fault(
        http, dev, {"target": "consume", "kind": "fail", "status": 409, "code": "nope", "seconds": 30}
    )
    token = await mint(http, dev)
    async with websockets.connect(dev.ws_url + f"/chat/ws?token={token}") as ws:
        assert await close_reason(ws) == "nope"
    await post(http, dev, "/_voice/clock", {"advance_seconds": 31})  # the fault's 30 s are over
    assert (await get(http, dev, "/_voice/faults"))["items"] == []
    fresh = await mint(http, dev)
    assert (await chat(dev, fresh, text=None))["event"] == "chat.connected"


async def test_store_faults_make_mints_fail_or_wait(
    dev: ServerProcess, http: httpx.AsyncClient, no_faults: None
) -> None:
    await add_fault(http, dev, {"target": "store", "kind": "unavailable", "count": 1})
    down = await http.get(f"{dev.url}/chat/token", params={"agent_id": "demo"}, headers=AUTH)
    assert (down.status_code, down.json()["code"]) == (503, "store_unavailable")
    await add_fault(http, dev, {"target": "store", "kind": "slow", "delay_ms": 400, "count": 1})
    loop = asyncio.get_running_loop()
    started = loop.time()
    await mint(http, dev)
    assert loop.time() - started >= 0.4


async def test_a_client_fault_drops_the_agents_socket(
    dev: ServerProcess, http: httpx.AsyncClient, no_faults: None
) -> None:
    sdk = await SdkClient.connect(dev.url, KEY)
    await sdk.create_agent("fragile")
    await add_fault(http, dev, {"target": "client", "kind": "drop", "agent_id": "fragile", "count": 1})
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await sdk.recv()
    gone = await http.get(f"{dev.url}/chat/token", params={"agent_id": "fragile"}, headers=AUTH)
    assert gone.json()["code"] == "agent_not_online"


async def test_faults_are_deleted_one_or_all(
    dev: ServerProcess, http: httpx.AsyncClient, no_faults: None
) -> None:
    one = await add_fault(http, dev, {"target": "whatsapp", "kind": "fail", "status": 500})
    await add_fault(http, dev, {"target": "whatsapp", "kind": "delay", "delay_ms": 10})
    deleted = await http.delete(f"{dev.url}/_voice/faults/{one['id']}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 1}
    again = await http.delete(f"{dev.url}/_voice/faults/{one['id']}")
    assert (again.status_code, again.json()["code"]) == (404, "fault_not_found")
    assert (await http.delete(dev.url + "/_voice/faults")).json() == {"deleted": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"target": "moon", "kind": "fail"},
        {"target": "mint", "kind": "fail", "code": "x"},
        {"target": "mint", "kind": "fail", "status": 200, "code": "x"},
        {"target": "store", "kind": "slow", "delay_ms": -5},
        {"target": "store", "kind": "unavailable", "count": 0},
        {"target": "store", "kind": "unavailable", "probability": 2},
        {"target": "store", "kind": "unavailable", "colour": "red"},
        ["store", "unavailable"],
    ],
)
async def test_bad_faults_are_invalid_requests(
    dev: ServerProcess, http: httpx.AsyncClient, body: Any
) -> None:
    answer = await http.post(dev.url + "/_voice/faults", json=body)
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request"), answer.text


async def test_a_fault_set_on_one_node_applies_on_the_other(
    pair: list[ServerProcess], http: httpx.AsyncClient
) -> None:
    a, b = pair
    await add_fault(
        http, a, {"target": "mint", "kind": "fail", "status": 429, "code": "slow_down", "count": 1}
    )

    async def refused_on_b() -> bool:
        answer = await http.get(f"{b.url}/webrtc/token", params={"agent_id": "demo"}, headers=AUTH)
        return answer.status_code == 429 and answer.json()["code"] == "slow_down"

    try:
        assert await eventually(refused_on_b)
        assert await eventually(lambda: _no_faults(http, a))  # b's application spent it everywhere
    finally:
        await http.delete(a.url + "/_voice/faults", headers=ADMIN_AUTH)


# -- webhooks ----------------------------------------------------------------------------------
def _webhook(numbers: int) -> dict[str, Any]:
    values = [{"value": {"metadata": {"phone_number_id": str(1000 + n)}}} for n in range(numbers)]
    return {"object": "whatsapp_business_account", "entry": [{"changes": values}]}


async def test_webhook_verdicts_are_journaled(dev: ServerProcess, http: httpx.AsyncClient) -> None:
    """Dev mode takes unsigned webhooks: one naming a number is accepted; one naming more
    numbers than a body may is refused with its code."""
    accepted = await http.post(dev.url + "/whatsapp/webhook", json=_webhook(1))
    assert accepted.status_code == 200, accepted.text
    refused = await http.post(dev.url + "/whatsapp/webhook", json=_webhook(65))
    assert refused.status_code == 400
    verdicts = (await get(http, dev, "/_voice/journal", kind="webhook.verdict"))["items"]
    assert [(v["verdict"], v.get("code")) for v in verdicts[-2:]] == [
        ("accepted", None),
        ("refused", "bad_request"),
    ]
    assert verdicts[-1]["channel"] == "whatsapp"


# -- a WebRTC session's timeline -----------------------------------------------------------------
async def test_a_webrtc_timeline_counts_audio_frames() -> None:
    from tests.realtime.peer import BrowserPeer  # aiortc: only this test needs it

    server = start_server(
        {"VOICE_API_KEYS": f"acme:{KEY}", "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1"}, ["--dev"]
    )
    peer = BrowserPeer()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            token = await mint(http, server, "webrtc")
            response, _ = await peer.connect(http, token)
            assert response.status_code == 200, response.text

            async def audio() -> list[dict[str, Any]]:
                rows = (await get(http, server, "/_voice/tokens", channel="webrtc", state="consumed"))[
                    "items"
                ]
                if not rows:
                    return []
                session = await get(http, server, f"/_voice/sessions/{rows[-1]['consumed_by']}")
                return [f for f in session["timeline"] if f["event"] == "audio"]

            frames = await eventually(audio, timeout=15)
            assert frames and frames[0]["direction"] == "browser->server"
            assert all(isinstance(f["audio_frames"], int) and f["audio_frames"] >= 1 for f in frames)
            assert sum(f["audio_frames"] for f in frames) > len(frames)  # counted, not one per frame
    finally:
        await peer.close()
        server.stop()


async def test_an_open_journal_stream_does_not_hold_shutdown_up() -> None:
    """uvicorn waits 5 s for open responses on SIGTERM; the stream ends as soon as the node drains."""
    server = start_server({}, ["--dev"])
    opened = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=None) as client,
            client.stream("GET", server.url + "/_voice/journal/stream") as answer,
        ):
            opened.set()
            async for _ in answer.aiter_lines():
                pass

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(opened.wait(), 10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.to_thread(server.stop, 20)
        assert loop.time() - started < 4.5, server.log()[-2000:]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader
        server.kill()


async def test_a_session_refused_before_the_consume_is_journaled(
    dev: ServerProcess, http: httpx.AsyncClient
) -> None:
    sdk = await SdkClient.connect(dev.url, KEY)
    await sdk.create_agent("leaving")
    token = await mint(http, dev, agent="leaving")
    await sdk.close()
    gone = await eventually(
        lambda: _offline(http, dev, "leaving")
    )  # the registry lets the agent go once its socket closes
    assert gone
    async with websockets.connect(dev.ws_url + f"/chat/ws?token={token}") as ws:
        assert await close_reason(ws) == "agent_not_online"
    refused = (await get(http, dev, "/_voice/journal", kind="consume.refused"))["items"]
    assert (refused[-1]["code"], refused[-1]["channel"]) == ("agent_not_online", "chat")
    row = next(
        r
        for r in (await get(http, dev, "/_voice/tokens", agent_id="leaving"))["items"]
        if r["channel"] == "chat"
    )
    assert row["state"] == "issued"  # refused before the consume: not spent


async def _offline(http: httpx.AsyncClient, server: ServerProcess, agent: str) -> bool:
    answer = await http.get(f"{server.url}/chat/token", params={"agent_id": agent}, headers=AUTH)
    return answer.status_code == 404


async def test_in_dev_mode_admin_keys_when_set_are_required(http: httpx.AsyncClient) -> None:
    server = start_server({"VOICE_ADMIN_KEYS": ADMIN}, ["--dev"])
    try:
        missing = await http.get(server.url + "/_voice/health")
        assert (missing.status_code, missing.json()["code"]) == (401, "admin_key_required")
        assert (await http.get(server.url + "/_voice/health", headers=ADMIN_AUTH)).status_code == 200
    finally:
        server.stop()


async def test_off_nothing_is_recorded(http: httpx.AsyncClient) -> None:
    from redis import Redis

    redis = start_redis()
    server = start_server(
        {"VOICE_TOKEN_SECRET": SECRET, "VOICE_API_KEYS": f"acme:{KEY}", "VOICE_STORE_URL": redis.url}
    )
    sdk = await SdkClient.connect(server.url, KEY)
    try:
        await sdk.create_agent("quiet")
        token = await mint(http, server, agent="quiet")
        async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "chat.connected"
        await asyncio.sleep(0.3)  # what a journal writer would have written by now
        with Redis.from_url(redis.url) as client:
            assert [k for k in client.scan_iter(match="*_voice*")] == []
    finally:
        await sdk.close()
        server.stop()
        redis.stop()
