"""WS /ws/stream across two real server processes on one real redis-server (issue 12).

A stream token minted for two agents, whose /client sockets are on different nodes, sees both
agents' chat and WebRTC sessions in one rising ``seq``; ``after=`` replays; the token is single
use; scopes decide what the socket may send; the query is checked before anything is spent.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.realtime.peer import BrowserPeer
from tests.support.procs import RedisProcess, ServerProcess, start_redis, start_server
from tests.support.sdk import SdkClient

pytestmark = pytest.mark.slow
KEY = "sk_test_stream_0123456789abcdef"
OTHER_KEY = "sk_test_other_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def node_env(redis: RedisProcess, name: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": "shared-secret-for-the-stream-tests",
        "VOICE_STORE_URL": redis.url,
        "VOICE_API_KEYS": f"acme:{KEY},other:{OTHER_KEY}",
        "VOICE_NODE_ID": name,
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
    }


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    redis = start_redis()
    a = start_server(node_env(redis, "node-a"))
    b = start_server(node_env(redis, "node-b") | {"VOICE_STREAM_QUEUE": "50"})
    yield a, b
    a.stop()
    b.stop()
    redis.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


class Agents:
    """``alpha`` registered on node A, ``beta`` on node B; each answers every message it gets."""

    def __init__(self, alpha: SdkClient, beta: SdkClient, alpha_id: str, beta_id: str) -> None:
        self.alpha, self.beta = alpha, beta
        self.alpha_id, self.beta_id = alpha_id, beta_id
        self.calls: list[str] = []  # chat calls the agents saw start, oldest first
        self._tasks = [asyncio.create_task(self._echo(alpha)), asyncio.create_task(self._echo(beta))]

    async def _echo(self, sdk: SdkClient) -> None:
        while True:
            frame = await sdk.recv(timeout=3600)
            if frame.get("event") == "llm.chat.started":
                self.calls.append(frame["call_id"])
            if frame.get("event") in ("chat.message", "user.message"):
                await sdk.send(
                    {"event": "bot.reply", "call_id": frame["call_id"], "text": "echo " + frame["text"]}
                )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.alpha.close()
        await self.beta.close()


@pytest.fixture
async def agents(
    nodes: tuple[ServerProcess, ServerProcess], request: pytest.FixtureRequest
) -> AsyncIterator[Agents]:
    a, b = nodes
    suffix = str(abs(hash(request.node.name)) % 10_000)
    alpha = await SdkClient.connect(a.url, KEY)
    assert (await alpha.create_agent("alpha-" + suffix))["event"] == "agent.created"
    beta = await SdkClient.connect(b.url, KEY)
    assert (await beta.create_agent("beta-" + suffix))["event"] == "agent.created"
    pair = Agents(alpha, beta, "alpha-" + suffix, "beta-" + suffix)
    yield pair
    await pair.close()


async def mint(
    http: httpx.AsyncClient, node: ServerProcess, channel: str, agent: str, **params: str
) -> dict[str, Any]:
    response = await http.get(
        f"{node.url}/{channel}/token", params={"agent_id": agent, **params}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def open_stream(node: ServerProcess, token: str, query: str = "") -> ClientConnection:
    ws = await websockets.connect(f"{node.ws_url}/ws/stream?token={token}{query}")
    return ws


async def frames_until(ws: ClientConnection, done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Frames from ``ws`` until ``done(frames)`` is true."""
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(got):
                got.append(json.loads(await ws.recv()))
    except TimeoutError:
        raise AssertionError(f"gave up waiting; got {got}") from None
    return got


async def refusal(node: ServerProcess, token: str, query: str = "") -> str:
    async with websockets.connect(f"{node.ws_url}/ws/stream?token={token}{query}") as ws:
        try:
            frame = await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.reason if closed.rcvd else "closed"
    return f"not refused: {frame!r}"


async def chat(node_url: str, token: str, text: str) -> str:
    """One chat session: send ``text``, wait for the agent's reply, hang up; the call id's session."""
    url = node_url.replace("http", "ws", 1) + f"/chat/ws?token={token}"
    async with websockets.connect(url) as ws:
        connected = json.loads(await ws.recv())
        assert connected["event"] == "chat.connected", connected
        await ws.send(json.dumps({"event": "message", "text": text}))
        while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10)))["event"] != "chat.done":
            pass
        assert frame["text"] == "echo " + text
        return str(connected["session_id"])


def names(frames: list[dict[str, Any]], agent: str) -> list[str]:
    return [f["event"] for f in frames if f.get("agent") == agent]


async def test_one_stream_sees_two_agents_on_two_nodes_in_one_rising_seq(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, _ = nodes
    alpha, beta = agents.alpha_id, agents.beta_id
    stream = await mint(http, a, "stream", f"{alpha},{beta}")
    assert stream["token"].startswith("stm_")
    ws = await open_stream(a, stream["token"])
    hello = json.loads(await ws.recv())
    assert hello == {
        "event": "connected",
        "agents": sorted([alpha, beta]),
        "scope": "observe",
        "call_id": None,
        "session": None,
    }
    assert json.loads(await ws.recv())["event"] == "log.caught_up"

    # beta's chat lands on node B, where beta's /client socket is; the stream is on node A.
    beta_chat = await mint(http, a, "chat", beta)
    await chat(beta_chat["server"], beta_chat["token"], "hello beta")
    # alpha's WebRTC session on node A.
    rtc = await mint(http, a, "webrtc", alpha)
    peer = BrowserPeer()
    async with httpx.AsyncClient(base_url=rtc["server"], timeout=20) as rtc_http:
        response, answer = await peer.connect(rtc_http, rtc["token"])
    assert response.status_code == 200, answer
    got = await frames_until(ws, lambda got: "call.started" in names(got, alpha))
    call_id = got[-1]["call_id"]
    await agents.alpha.send({"event": "call.hangup", "call_id": call_id})  # alpha ends its call

    def both_ended(got: list[dict[str, Any]]) -> bool:
        return "llm.chat.ended" in names(got, beta) and "call.ended" in names(got, alpha)

    got += await frames_until(ws, lambda more: both_ended(got + more))
    await peer.close()
    await ws.close()
    events = [f for f in got if "seq" in f]
    seqs = [f["seq"] for f in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    # turn.end follows each chat.message (issue 18 item 1); the agent's bot.reply is its answer.
    assert names(got, beta)[:3] == ["llm.chat.started", "chat.message", "turn.end"]
    assert "bot.reply" in names(got, beta)
    assert names(got, beta)[-2:] == ["call.ended", "llm.chat.ended"]
    assert names(got, alpha) == ["call.started", "call.hangup", "call.ended"]
    message = next(f for f in events if f["event"] == "chat.message")
    assert message["text"] == "hello beta" and message["agent_id"] == beta and message["session_id"]
    started = next(f for f in events if f["event"] == "call.started")
    assert started["transport"] == "webrtc" and started["call_id"].startswith("wrt_")


async def test_after_replays_then_goes_live_and_the_token_is_single_use(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, b = nodes
    beta = agents.beta_id
    for text in ("one", "two"):
        minted = await mint(http, a, "chat", beta)
        await chat(minted["server"], minted["token"], text)
    first = await mint(http, b, "stream", beta)
    ws = await open_stream(b, first["token"], "&after=0")
    replay = await frames_until(ws, lambda got: bool(got) and got[-1]["event"] == "log.caught_up")
    await ws.close()
    messages = [f["text"] for f in replay if f["event"] == "chat.message"]
    assert messages[-2:] == ["one", "two"]
    cursor = next(f["seq"] for f in replay if f["event"] == "chat.message" and f["text"] == "one")

    # A second socket resumes after "one": "two" and what follows, nothing at or before the cursor.
    second = await mint(http, a, "stream", beta)
    ws = await open_stream(a, second["token"], f"&after={cursor}")
    resumed = await frames_until(ws, lambda got: bool(got) and got[-1]["event"] == "log.caught_up")
    assert all(f["seq"] > cursor for f in resumed if "seq" in f)
    assert [f["text"] for f in resumed if f["event"] == "chat.message"] == ["two"]
    minted = await mint(http, a, "chat", beta)
    await chat(minted["server"], minted["token"], "three")
    live = await frames_until(ws, lambda got: any(f.get("text") == "three" for f in got))
    await ws.close()
    assert live[-1]["seq"] > resumed[-2]["seq"]

    # The first token was spent by its socket, on the other node too.
    assert await refusal(a, first["token"]) == "token_spent"


async def test_the_query_is_checked_before_the_token_is_spent(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, _ = nodes
    alpha, beta = agents.alpha_id, agents.beta_id
    token = (await mint(http, a, "stream", alpha))["token"]
    assert await refusal(a, token, f"&agent={beta}") == "token_wrong_agent"
    assert await refusal(a, token, "&after=-1") == "bad_request"
    assert await refusal(a, token, "&after=1e3") == "bad_request"
    assert await refusal(a, token, "&after=%C2%B2") == "bad_request"  # "²" passes str.isdigit()
    assert await refusal(a, token, "&session=" + "x" * 200) == "bad_request"
    chat_token = (await mint(http, a, "chat", alpha))["token"]
    assert await refusal(a, chat_token) == "token_wrong_channel"
    assert await refusal(a, "stm_forged.token") == "token_invalid"
    assert await refusal(a, "") == "token_invalid"
    ws = await open_stream(a, token, f"&agent={alpha}")  # still unspent after all of the above
    assert json.loads(await ws.recv())["agents"] == [alpha]
    await ws.close()


async def test_scopes_decide_what_a_stream_may_send(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, _ = nodes
    beta = agents.beta_id
    observer = await open_stream(a, (await mint(http, a, "stream", beta))["token"])
    supervisor = await open_stream(a, (await mint(http, a, "stream", beta, scope="supervise"))["token"])
    for ws in (observer, supervisor):
        await frames_until(ws, lambda got: bool(got) and got[-1]["event"] == "log.caught_up")
        await ws.send(json.dumps({"action": "ping"}))
        assert json.loads(await ws.recv()) == {"event": "pong"}

    minted = await mint(http, a, "chat", beta)
    browser = await websockets.connect(
        minted["server"].replace("http", "ws", 1) + f"/chat/ws?token={minted['token']}"
    )
    assert json.loads(await browser.recv())["event"] == "chat.connected"
    started = (
        await frames_until(supervisor, lambda got: any(f["event"] == "llm.chat.started" for f in got))
    )[-1]
    call_id = started["call_id"]

    await observer.send(json.dumps({"action": "say", "call_id": call_id, "text": "hi"}))
    refused = await frames_until(observer, lambda got: any(f["event"] == "error" for f in got))
    assert refused[-1]["code"] == "scope_forbidden"
    await supervisor.send(json.dumps({"action": "teleport"}))
    assert (await frames_until(supervisor, lambda got: bool(got) and got[-1]["event"] == "error"))[-1][
        "code"
    ] == "bad_request"
    await supervisor.send(json.dumps({"action": "say", "call_id": "chat-unknown", "text": "x"}))
    assert (await frames_until(supervisor, lambda got: bool(got) and got[-1]["event"] == "error"))[-1][
        "code"
    ] == "call_not_found"

    # say: the browser (on node B) gets the words as a bot reply; hangup ends the call.
    await supervisor.send(json.dumps({"action": "say", "call_id": call_id, "text": "a human here"}))
    while (frame := json.loads(await asyncio.wait_for(browser.recv(), 10)))["event"] != "chat.done":
        pass
    assert frame["text"] == "a human here"
    await supervisor.send(json.dumps({"action": "hangup", "call_id": call_id}))
    ended = await frames_until(supervisor, lambda got: any(f["event"] == "llm.chat.ended" for f in got))
    assert any(f["event"] == "ack" and f["action"] == "hangup" for f in ended)
    said = [f for f in ended if f["event"] == "bot.reply"]
    assert said and said[-1]["by"] == "supervisor"
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(browser.recv(), 10)
    for ws in (observer, supervisor):
        await ws.close()


async def test_a_token_pinned_to_a_call_sees_only_that_call(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, _ = nodes
    beta = agents.beta_id
    watch_all = await open_stream(a, (await mint(http, a, "stream", beta))["token"])
    await frames_until(watch_all, lambda got: bool(got) and got[-1]["event"] == "log.caught_up")
    first = await mint(http, a, "chat", beta)
    await chat(first["server"], first["token"], "first")
    got = await frames_until(watch_all, lambda got: any(f["event"] == "llm.chat.ended" for f in got))
    pinned_call = next(f["call_id"] for f in got if f["event"] == "llm.chat.started")
    await watch_all.close()

    pinned = await open_stream(
        a, (await mint(http, a, "stream", beta, call_id=pinned_call))["token"], "&after=0"
    )
    second = await mint(http, a, "chat", beta)
    await chat(second["server"], second["token"], "second")
    third = await mint(http, a, "chat", beta)
    await chat(third["server"], third["token"], "third")
    seen = await frames_until(pinned, lambda got: sum(f["event"] == "log.caught_up" for f in got) == 1)
    await asyncio.sleep(1.0)  # what the later chats produce must not arrive
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            seen.append(json.loads(await pinned.recv()))
    await pinned.close()
    assert {f["call_id"] for f in seen if "seq" in f} == {pinned_call}
    assert [f["text"] for f in seen if f["event"] == "chat.message"] == ["first"]


async def test_another_org_never_sees_these_events(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    a, _ = nodes
    beta = agents.beta_id
    response = await http.get(
        f"{a.url}/stream/token", params={"agent_id": beta}, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert response.status_code == 404  # beta is acme's: for "other" it is not online
    assert response.json()["code"] == "agent_not_online"


async def test_a_reader_that_stops_reading_is_closed_with_slow_consumer(
    nodes: tuple[ServerProcess, ServerProcess], agents: Agents, http: httpx.AsyncClient
) -> None:
    """The socket's kernel buffer is kept tiny and the reader never reads: the server's queue for
    it (VOICE_STREAM_QUEUE=50 on node B) fills, and it is closed with 1013 slow_consumer instead
    of buffering without bound."""
    _, b = nodes
    beta = agents.beta_id
    token = (await mint(http, b, "stream", beta))["token"]
    sock = socket.create_connection(("127.0.0.1", b.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled = await websockets.connect(f"{b.ws_url}/ws/stream?token={token}", sock=sock, max_queue=1)
    minted = await mint(http, b, "chat", beta)
    browser = await websockets.connect(
        minted["server"].replace("http", "ws", 1) + f"/chat/ws?token={minted['token']}"
    )
    assert json.loads(await browser.recv())["event"] == "chat.connected"
    async with asyncio.timeout(10):
        while not agents.calls:
            await asyncio.sleep(0.02)
    text = "word " * 3000  # ~15 KB an event, under the 16 KiB an entry keeps whole
    for _ in range(600):
        await agents.beta.send({"event": "bot.reply", "call_id": agents.calls[-1], "text": text})
    async with asyncio.timeout(60):
        while "voice_streams_live 0.0" not in (await http.get(f"{b.url}/metrics")).text:
            await asyncio.sleep(0.2)
    await browser.close()
    # A reader that does not read cannot be handed the close frame either (it sits behind the
    # data the reader left in the buffers, and the server gives up on it): the socket is gone.
    with pytest.raises(websockets.ConnectionClosed):
        async with asyncio.timeout(30):
            while True:
                await stalled.recv()
    closes = [json.loads(line) for line in b.log().splitlines() if '"stream closed"' in line]
    assert [c["code"] for c in closes] == ["slow_consumer"]
