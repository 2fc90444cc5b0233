"""One scenario: start the rig and the load, inject each fault, wait for recovery, replay, count.

Recovery after a fault is measured from the moment its own action was undone (the restart, the
SIGCONT, the promotion) to the last failed answer (anything but "ok" and ``token_spent``) before
``clean_tail`` seconds without one; 0 when the failures stopped with the fault. No clean window
within ``max_recover`` seconds counts as no recovery, which breaks an invariant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

import httpx

from scripts.chaos_lib.ledger import Fault, Ledger
from scripts.chaos_lib.load import Load, Traffic, agent_ids, run_agent
from scripts.chaos_lib.rig import Rig, Timing, inject


@dataclass
class Plan:
    topology: str
    faults: tuple[str, ...]
    nodes: int = 3
    warmup: float = 3.0
    clean_tail: float = 2.0
    max_recover: float = 30.0
    heartbeat_ttl: float = 3.0


async def run(plan: Plan, load: Load, timing: Timing, ledger: Ledger) -> Rig:
    rig = await asyncio.to_thread(Rig, plan.topology, plan.nodes, plan.heartbeat_ttl)
    try:
        await _drive(rig, plan, load, timing, ledger)
    finally:
        await asyncio.to_thread(rig.stop)
    return rig


async def _drive(rig: Rig, plan: Plan, load: Load, timing: Timing, ledger: Ledger) -> None:
    stop_agents, stop_traffic = asyncio.Event(), asyncio.Event()
    ledger.started = time.monotonic()  # the clock starts with the load, once every process is up
    ids = agent_ids(load)
    agents = [asyncio.create_task(run_agent(rig, ledger, a, i, stop_agents)) for i, a in enumerate(ids)]
    limits = httpx.Limits(max_connections=load.workers * 2)
    try:
        async with httpx.AsyncClient(timeout=load.timeout, limits=limits) as http:
            async with asyncio.timeout(30):
                while len(ledger.registrations) < len(ids):  # noqa: ASYNC110 (a count set by other tasks)
                    await asyncio.sleep(0.05)
            traffic = Traffic(rig, ledger, load, http)
            tasks = [asyncio.create_task(traffic.worker(stop_traffic)) for _ in range(load.workers)]
            tasks += [asyncio.create_task(traffic.late_presenter(stop_traffic)) for _ in range(2)]
            try:
                await asyncio.sleep(plan.warmup)
                for name in plan.faults:
                    fault = await inject(rig, name, ledger, timing)
                    ledger.faults.append(fault)
                    await _recover(ledger, fault, plan)
            finally:
                stop_traffic.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            await traffic.settle()
            await traffic.replay()
            await traffic.settle()
            await _agents_heard(ledger)
    finally:
        stop_agents.set()
        await asyncio.gather(*agents, return_exceptions=True)


async def _agents_heard(ledger: Ledger, quiet: float = 1.0) -> None:
    """Give the agents' ``call.ended`` frames of the last sessions time to arrive (at most 5 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    seen, since = -1, loop.time()
    while loop.time() < deadline:
        total = sum(ledger.ended_agent.values())
        if total != seen:
            seen, since = total, loop.time()
        elif loop.time() - since >= quiet:
            return
        await asyncio.sleep(0.1)


async def _recover(ledger: Ledger, fault: Fault, plan: Plan) -> None:
    assert fault.restored is not None
    while True:
        since = [t for t in ledger.failures if t >= fault.injected]
        last = max(since, default=fault.restored)
        now = ledger.now()
        if now - max(last, fault.restored) >= plan.clean_tail:
            fault.recovered = max(0.0, last - fault.restored)
            fault.failures = len(since)
            return
        if now - fault.restored > plan.max_recover:
            fault.failures = len(since)
            fault.note = f"failures still coming {plan.max_recover:g} s after the restore"
            return
        await asyncio.sleep(0.1)


# Error lines a node logs while its store is away: background loops that retry.
EXPECTED_ERRORS = (
    "whatsapp bus listener failed",
    "whatsapp channel sync failed",
    "whatsapp session sweep failed",
    "heartbeat failed for agent",
)


def error_lines(rig: Rig) -> list[str]:
    """Error and critical log lines of every node of the run (killed ones included), beyond the
    background loops' expected retries: a traceback here is worth reading even when no answer
    showed it."""
    found = []
    for node in (*rig.retired, *rig.nodes):
        with contextlib.suppress(OSError):
            for line in node.log().splitlines():
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    msg = str(entry.get("msg"))
                    if entry.get("level") in ("error", "critical") and not msg.startswith(EXPECTED_ERRORS):
                        found.append(f"{node.env['VOICE_NODE_ID']}: {msg[:300]}")
    return found
