"""The load: agents that behave like the SDK, workers that mint and race consumes, a late presenter.

Each worker mints a chat token on the next node (round robin, dead nodes included: a client
behind a load balancer that has not noticed yet gets "unreachable") for the next agent, then
``racers`` browsers present it at the same instant, each on a different node. A browser whose
session opens holds it for up to ``hold`` seconds, then closes it. A second, later presentation
of every token (``late`` seconds after its mint, so across a fault) checks that a consume once
reported stays consumed. Every request has a timeout; past it the answer counts as "hung".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import random
from dataclasses import dataclass

import httpx
import websockets

from scripts.chaos_lib.ledger import Attempt, Ledger, Token
from scripts.chaos_lib.rig import KEY, Rig
from tests.support.procs import ServerProcess
from tests.support.sdk import SdkClient

AUTH = {"Authorization": f"Bearer {KEY}"}
REFUSAL_CLOSES = {1008, 1013}  # token and agent refusals, at_capacity; 1011 only as store_unavailable


@dataclass
class Load:
    workers: int = 8
    racers: int = 4
    agents: int = 3
    hold: float = 0.5
    late: float = 1.5
    timeout: float = 10.0


def agent_ids(load: Load) -> list[str]:
    return [f"chaos-agent-{i}" for i in range(load.agents)]


async def run_agent(rig: Rig, ledger: Ledger, agent_id: str, index: int, stop: asyncio.Event) -> None:
    """The SDK's behaviour: connect to a live node, register, read every frame; on a close,
    reconnect half a second later (to the next live node) and register again."""
    attempt = index
    while not stop.is_set():
        nodes = rig.live_nodes()
        attempt += 1
        sdk: SdkClient | None = None
        try:
            if not nodes:
                raise ConnectionError("no live node")
            node = nodes[attempt % len(nodes)]
            sdk = await SdkClient.connect(node.url, KEY)
            await sdk.send({"event": "agent.create", "agent_id": agent_id})
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    frame = await sdk.recv(timeout=0.5)
                    event = frame.get("event")
                    if event == "agent.created":
                        ledger.registrations[agent_id] += 1
                        ledger.moves.append((agent_id, node.env["VOICE_NODE_ID"], ledger.now()))
                    elif event == "error":
                        ledger.agent_refusals[str(frame.get("code"))] += 1
                    elif event == "call.ended":
                        ledger.ended_agent[str(frame.get("reason"))] += 1
                        ledger.agent_ended[str(frame.get("call_id"))] = ledger.now()
                    elif event == "llm.chat.started":
                        ledger.agent_started[str(frame.get("call_id"))] = (
                            str(frame.get("session_id")),
                            ledger.now(),
                        )
        except (websockets.ConnectionClosed, websockets.InvalidHandshake, ConnectionError, OSError):
            pass
        finally:
            if sdk is not None:
                with contextlib.suppress(Exception):
                    await sdk.close()
        if not stop.is_set():
            await asyncio.sleep(0.5)


async def mint(http: httpx.AsyncClient, node: ServerProcess, agent_id: str) -> tuple[str, str | None]:
    """("ok", token), or the refusal's outcome with no token."""
    try:
        response = await http.get(node.url + "/chat/token", params={"agent_id": agent_id}, headers=AUTH)
    except httpx.ConnectError:
        return "unreachable", None
    except httpx.TimeoutException:
        return "hung", None
    except httpx.TransportError:
        return "lost", None
    if response.status_code == 200:
        return "ok", str(response.json()["token"])
    code = None
    if "json" in response.headers.get("content-type", ""):
        code = response.json().get("code")
    if response.status_code < 500 or (response.status_code == 503 and code == "store_unavailable"):
        return str(code), None
    return f"http {response.status_code} {code}", None


Holders = set[asyncio.Task[None]]


async def consume(
    ledger: Ledger, token: Token, node: ServerProcess, load: Load, hold: float, holders: Holders
) -> None:
    """Present the token once on ``node`` and note the answer the moment it arrives; an opened
    session is then held for ``hold`` seconds by a task of ``holders``, which notes how it ended."""
    started = ledger.now()
    outcome, ws, session = await _open(node, token.token, load.timeout)
    if session is not None:
        ledger.opened[session] = (token.agent, node.env["VOICE_NODE_ID"], ledger.now())
    ledger.note_consume(token, Attempt(node.env["VOICE_NODE_ID"], started, ledger.now(), outcome))
    if ws is not None:
        task = asyncio.create_task(_hold(ledger, ws, hold))
        holders.add(task)
        task.add_done_callback(holders.discard)


async def _hold(ledger: Ledger, ws: websockets.ClientConnection, hold: float) -> None:
    try:
        async with asyncio.timeout(hold):
            await ws.recv()  # chat.history never comes (no messages); only a close ends this early
            await ws.recv()
    except TimeoutError:
        with contextlib.suppress(Exception):
            await ws.close()
        ledger.ended_browser["closed by the browser"] += 1
    except websockets.ConnectionClosed as closed:
        ledger.ended_browser[_ending(closed)] += 1
    except Exception as exc:  # the node died under the socket in some other way
        ledger.ended_browser[f"lost ({type(exc).__name__})"] += 1
        with contextlib.suppress(Exception):
            await ws.close()


def _ending(closed: websockets.ConnectionClosed) -> str:
    if closed.rcvd is None:
        return "connection lost (node killed)"
    return f"{closed.rcvd.code} {closed.rcvd.reason}"


async def _open(
    node: ServerProcess, token: str, limit: float
) -> tuple[str, websockets.ClientConnection | None, str | None]:
    ws: websockets.ClientConnection | None = None
    try:
        async with asyncio.timeout(limit):
            ws = await websockets.connect(node.ws_url + f"/chat/ws?token={token}", close_timeout=1)
            first = json.loads(await ws.recv())
    except TimeoutError:
        await _close(ws)
        return "hung", None, None
    except websockets.ConnectionClosed as closed:
        await _close(ws)
        if closed.rcvd is None:
            return "lost", None, None
        code, reason = closed.rcvd.code, closed.rcvd.reason
        if code in REFUSAL_CLOSES or (code == 1011 and reason == "store_unavailable"):
            return reason, None, None
        return f"close {code} {reason}", None, None
    except websockets.InvalidStatus as refused:
        await _close(ws)
        return f"handshake {refused.response.status_code}", None, None
    except (websockets.InvalidHandshake, EOFError):
        await _close(ws)
        return "lost", None, None
    except OSError:
        await _close(ws)
        return "unreachable", None, None
    if first.get("event") == "chat.connected":
        return "ok", ws, str(first.get("session_id"))
    await _close(ws)
    return f"frame {first.get('event')}", None, None


async def _close(ws: websockets.ClientConnection | None) -> None:
    if ws is not None:
        with contextlib.suppress(Exception):
            await ws.close()


class Traffic:
    """The workers and the late presenter of one scenario, until ``stop``."""

    def __init__(self, rig: Rig, ledger: Ledger, load: Load, http: httpx.AsyncClient) -> None:
        self.rig, self.ledger, self.load, self.http = rig, ledger, load, http
        self.agents = agent_ids(load)
        self.counter = itertools.count()
        self.pending: collections.deque[Token] = collections.deque(maxlen=5000)
        self.random = random.Random(13)
        self.holders: Holders = set()  # opened sessions still held

    async def worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            index = next(self.counter)
            nodes = list(self.rig.nodes)
            outcome, value = await mint(
                self.http, nodes[index % len(nodes)], self.agents[index % len(self.agents)]
            )
            self.ledger.note_mint(outcome)
            if value is None:
                await asyncio.sleep(0.05)  # a refused mint is retried by the next round, not at once
                continue
            token = Token(value, self.agents[index % len(self.agents)], self.ledger.now())
            self.ledger.tokens.append(token)
            racers = [
                consume(self.ledger, token, node, self.load, self._hold(), self.holders)
                for node in (nodes[(index + k) % len(nodes)] for k in range(self.load.racers))
            ]
            await asyncio.gather(*racers)
            self.pending.append(token)

    def _hold(self) -> float:
        return self.random.uniform(0, self.load.hold)

    async def late_presenter(self, stop: asyncio.Event) -> None:
        """Present each raced token once more, ``late`` seconds after its mint, on a random node."""
        index = 0
        while not stop.is_set():
            if not self.pending or self.ledger.now() - self.pending[0].minted_at < self.load.late:
                await asyncio.sleep(0.05)
                continue
            token = self.pending.popleft()
            nodes = list(self.rig.nodes)
            index += 1
            await consume(self.ledger, token, nodes[index % len(nodes)], self.load, 0, self.holders)

    async def settle(self) -> None:
        """Wait for the sessions still held to end."""
        await asyncio.gather(*list(self.holders), return_exceptions=True)

    async def replay(self, concurrency: int = 16) -> None:
        """After the run: every token once more (each reported consumed by now), on any node."""
        gate = asyncio.Semaphore(concurrency)
        nodes = list(self.rig.nodes)

        async def one(index: int, token: Token) -> None:
            async with gate:
                await consume(self.ledger, token, nodes[index % len(nodes)], self.load, 0, self.holders)

        await asyncio.gather(*(one(i, t) for i, t in enumerate(self.ledger.tokens)))
