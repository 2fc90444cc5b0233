"""A Sentinel failover during a stream of mints and consumes (issue 5, CONTRACT §8).

Two real server processes share one ``redis+sentinel://`` URL (a master, two replicas, three
Sentinels, all from the same redis-server binary). For several seconds, 20 workers mint chat
tokens on either node and present each token twice at the same instant, once on each node. In
the middle, the master goes away: demoted by ``SENTINEL FAILOVER`` (coordinated) or SIGKILLed
(crash). What must hold:

* no token ever opens two sessions, neither in the race nor when every consumed token is
  presented once more after the failover (a ``DEL`` lost with the old master would let it in);
  that includes tokens minted before the failover and first presented just after it, while a
  demoted master may still be taking writes (a browser connects some time after its mint);
* every refusal is a documented, clean one: HTTP 503 ``store_unavailable`` on a mint, a close
  1011 ``store_unavailable`` or 1008 ``token_spent`` on a consume; no 500, nothing hung (every
  request runs under a timeout);
* the nodes recover on their own (no restart) within ``RECOVERY_SECONDS`` of the failover.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import websockets
from redis import Redis

from tests.support.procs import SentinelGroup, ServerProcess, start_sentinel_group, start_server
from tests.support.sdk import SdkClient

pytestmark = pytest.mark.slow
KEY = "sk_test_failover_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
AGENT = "steady"
WORKERS = 20
REQUEST_TIMEOUT = 5.0  # every mint and every consume; beyond it the request counts as hung
FAILOVER_AT = 2.5  # seconds into the stream
MIN_STREAM = 10.0
MAX_STREAM = 25.0
CLEAN_TAIL = 2.0  # the stream ends after this long without a refusal, once the new master is up
RECOVERY_SECONDS = 10.0
HELD = 200  # tokens minted before the failover and consumed right after the new master is up
CLEAN = {"store_unavailable"}  # the refusals a failover may cause


@dataclass
class Rig:
    group: SentinelGroup
    nodes: list[ServerProcess]
    http: httpx.AsyncClient


@dataclass
class Race:
    """One token: when it was minted and what its two simultaneous consumes answered."""

    token: str
    minted_at: float
    outcomes: list[str] = field(default_factory=list)


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    mints: Counter[str] = field(default_factory=Counter)
    consumes: Counter[str] = field(default_factory=Counter)
    races: list[Race] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # when each clean refusal happened
    unexpected: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str, outcome: str) -> None:
        (self.mints if what == "mint" else self.consumes)[outcome] += 1
        if outcome in CLEAN:
            self.refusals.append(self.now())
        elif outcome not in ("ok", "token_spent"):
            self.unexpected.append(f"{what} at {self.now():.2f}s: {outcome}")


def node_env(group: SentinelGroup, name: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": "failover-secret-0123456789abcdef",
        "VOICE_STORE_URL": group.url,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_NODE_ID": name,
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_MAX_SESSIONS": "5000",
        "VOICE_MAX_SESSIONS_PER_ORG": "5000",
        "VOICE_LOG_LEVEL": "WARNING",
    }


# Error lines a node may log while its store fails over: background loops that retry.
EXPECTED_ERRORS = (
    "whatsapp bus listener failed; resubscribing",
    "whatsapp channel sync failed; retrying",
    "whatsapp session sweep failed",
    "heartbeat failed for agent",
)


def unexpected_errors(node: ServerProcess) -> list[str]:
    """Error log lines other than a listener's resubscription: an unhandled error, a 500."""
    lines = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    return [
        str(line)[:2000]
        for line in lines
        if line.get("level") in ("error", "critical") and not str(line.get("msg")).startswith(EXPECTED_ERRORS)
    ]


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    group = start_sentinel_group(replicas=2, sentinels=3, quorum=2)
    nodes: list[ServerProcess] = []
    try:
        nodes = [start_server(node_env(group, f"node-{name}")) for name in "ab"]
        limits = httpx.Limits(max_connections=WORKERS * 2)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits) as http:
            yield Rig(group, nodes, http)
        for node in nodes:
            assert node.proc.poll() is None, f"a node died:\n{node.log()[-3000:]}"
            assert not unexpected_errors(node), unexpected_errors(node)[:5]
    finally:
        for node in nodes:
            node.stop()
        group.stop()


@pytest.fixture
async def agent(rig: Rig) -> AsyncIterator[SdkClient]:
    """The agent every token is for, on node A; its frames are read and dropped so its socket
    never pushes back on the sessions."""
    sdk = await SdkClient.connect(rig.nodes[0].url, KEY)
    assert (await sdk.create_agent(AGENT))["event"] == "agent.created"

    async def drain() -> None:
        async for _ in sdk.ws:
            pass

    reader = asyncio.create_task(drain())
    yield sdk
    reader.cancel()
    await sdk.close()


async def mint(rig: Rig, node: ServerProcess) -> tuple[str, str | None]:
    """("ok", token), or the refusal's code with no token."""
    try:
        response = await rig.http.get(f"{node.url}/chat/token", params={"agent_id": AGENT}, headers=AUTH)
    except httpx.TimeoutException:
        return "hung", None
    if response.status_code == 200:
        return "ok", str(response.json()["token"])
    code = response.json().get("code") if "json" in response.headers.get("content-type", "") else None
    if response.status_code == 503 and code == "store_unavailable":
        return "store_unavailable", None
    return f"http {response.status_code} {code}", None


async def consume(node: ServerProcess, token: str) -> str:
    """ "ok" (the session opened), "token_spent", "store_unavailable", or what else happened."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            async with websockets.connect(node.ws_url + f"/chat/ws?token={token}", close_timeout=1) as ws:
                try:
                    first = json.loads(await ws.recv())
                    if first.get("event") == "error":  # a refusal: its error frame, then the close
                        await ws.recv()
                except websockets.ConnectionClosed as closed:
                    code, reason = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")
                    expected = {"token_spent": 1008, "store_unavailable": 1011}.get(reason)
                    return reason if code == expected else f"close {code} {reason!r}"
                return "ok" if first.get("event") == "chat.connected" else f"frame {first}"
    except TimeoutError:
        return "hung"
    except websockets.InvalidStatus as refused:
        return f"handshake {refused.response.status_code}"


async def race(rig: Rig, tally: Tally, index: int) -> Race | None:
    a, b = rig.nodes
    outcome, token = await mint(rig, rig.nodes[index % 2])
    tally.note("mint", outcome)
    if token is None:
        return None
    entry = Race(token, tally.now())
    entry.outcomes = list(await asyncio.gather(consume(a, token), consume(b, token)))
    for result in entry.outcomes:
        tally.note("consume", result)
    tally.races.append(entry)
    return entry


@dataclass
class Failover:
    triggered: float  # seconds into the stream
    promoted: float  # Sentinel reports a new master that says it is one
    demoted: float  # the old master is dead or a replica: no node can write to it any more
    new_master: int
    held: list[Race]  # minted before the failover, first presented once the new master was up


async def stream(rig: Rig, trigger: Callable[[], int]) -> tuple[Tally, Failover]:
    """Run the workers, call ``trigger`` (it returns the old master's port) at FAILOVER_AT, and
    stop once the old master can take no more writes and the nodes have answered cleanly for
    CLEAN_TAIL seconds."""
    tally = Tally()
    held = [entry for entry in [await hold(rig, tally, i) for i in range(HELD)] if entry is not None]
    stop = asyncio.Event()
    counter = iter(range(10**9))

    async def worker() -> None:
        while not stop.is_set():
            await race(rig, tally, next(counter))

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    try:
        await asyncio.sleep(FAILOVER_AT - tally.now())
        triggered = tally.now()
        old = await asyncio.to_thread(trigger)
        new_master = await asyncio.to_thread(rig.group.wait_for_master_other_than, old, 20.0)
        promoted = tally.now()
        await present(rig, tally, held)
        await asyncio.to_thread(rig.group.wait_demoted, old, 20.0)
        demoted = tally.now()
        while tally.now() < MAX_STREAM:
            last_refusal = max(tally.refusals, default=0.0)
            if tally.now() >= MIN_STREAM and tally.now() - max(last_refusal, demoted) >= CLEAN_TAIL:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    return tally, Failover(triggered, promoted, demoted, new_master, held)


async def hold(rig: Rig, tally: Tally, index: int) -> Race | None:
    outcome, token = await mint(rig, rig.nodes[index % 2])
    tally.note("mint", outcome)
    return None if token is None else Race(token, tally.now())


async def present(rig: Rig, tally: Tally, held: list[Race]) -> None:
    """Each held token once, on either node, WORKERS at a time."""
    gate = asyncio.Semaphore(WORKERS)

    async def one(index: int, entry: Race) -> None:
        async with gate:
            entry.outcomes.append(await consume(rig.nodes[index % 2], entry.token))
            tally.note("consume", entry.outcomes[-1])

    await asyncio.gather(*(one(i, entry) for i, entry in enumerate(held)))


async def replay(rig: Rig, races: list[Race]) -> Counter[str]:
    """Present every token that opened a session once more: a consume lost with the old master
    would open a second one now."""
    gate = asyncio.Semaphore(WORKERS)

    async def again(index: int, entry: Race) -> str:
        async with gate:
            return await consume(rig.nodes[index % 2], entry.token)

    return Counter(await asyncio.gather(*(again(i, r) for i, r in enumerate(races))))


async def settle(rig: Rig) -> int:
    """Ten sequential mint + double consume cycles after the stream: each must fully work."""
    tally = Tally()
    for index in range(10):
        entry = await race(rig, tally, index)
        assert entry is not None and sorted(entry.outcomes) == ["ok", "token_spent"], (tally.mints, entry)
    return len(tally.races)


async def check_failover(rig: Rig, trigger: Callable[[], int], label: str) -> None:
    tally, failover = await stream(rig, trigger)
    triggered = failover.triggered
    refusals = [t for t in tally.refusals if t >= triggered - 0.5]
    recovered = max(refusals, default=triggered) - triggered
    doubles = [r for r in tally.races if r.outcomes.count("ok") > 1]
    opened = [r for r in tally.races if "ok" in r.outcomes]
    lost_mints = sum(1 for r in tally.races if r.outcomes == ["token_spent", "token_spent"])
    replayed = await replay(rig, opened)
    held_first = Counter(r.outcomes[0] for r in failover.held)
    held_again = await replay(rig, [r for r in failover.held if r.outcomes == ["ok"]])
    with Redis(port=failover.new_master) as new_master:
        served = new_master.info("commandstats").get("cmdstat_del", {}).get("calls", 0)
    summary = (
        f"[{label}] {len(tally.races)} raced tokens in {tally.now():.1f}s; failover at {triggered:.2f}s, "
        f"new master +{failover.promoted - triggered:.2f}s, old master unwritable by "
        f"+{failover.demoted - triggered:.2f}s, last refusal +{recovered:.2f}s; "
        f"mints {dict(tally.mints)}; consumes {dict(tally.consumes)}; "
        f"raced tokens refused twice as spent (mint lost with the old master): {lost_mints}; "
        f"replay of {len(opened)} raced tokens that opened: {dict(replayed)}; "
        f"{len(failover.held)} tokens minted before, presented after the promotion: {dict(held_first)}, "
        f"presented again at the end: {dict(held_again)}; DELs served by the new master: {served}"
    )
    print(summary)
    assert not doubles, (summary, [r.outcomes for r in doubles[:5]])
    assert set(held_again) <= {"token_spent"}, ("tokens opened two sessions", summary)
    assert set(replayed) <= {"token_spent"}, ("tokens opened two sessions", summary)
    assert not tally.unexpected, (summary, tally.unexpected[:10])
    assert len(refusals) == len(tally.refusals), ("refusals before the failover", summary)
    assert recovered <= RECOVERY_SECONDS, summary
    assert tally.mints["ok"] > 0 and tally.consumes["ok"] > 0 and served > 0, summary
    assert await settle(rig) == 10


async def test_coordinated_failover_keeps_tokens_single_use_and_recovers(rig: Rig, agent: SdkClient) -> None:
    """SENTINEL FAILOVER mid-stream: the old master is demoted while clients still talk to it."""

    def demote() -> int:
        old = rig.group.master_port()
        assert old is not None
        rig.group.failover()
        return old

    await check_failover(rig, demote, "coordinated")


async def test_master_crash_keeps_tokens_single_use_and_recovers(rig: Rig, agent: SdkClient) -> None:
    """SIGKILL of the master mid-stream: Sentinel promotes a replica after down-after (1 s)."""
    await check_failover(rig, rig.group.crash_master, "crash")
