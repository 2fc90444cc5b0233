"""``scripts/chaos``: parse the options, run each scenario under one deadline, print the tables,
exit 1 if an invariant broke (2: the rig could not start; 3: the deadline passed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

from scripts.bench_lib.children import exit_on_termination
from scripts.chaos_lib.ledger import Ledger
from scripts.chaos_lib.load import Load
from scripts.chaos_lib.report import Result, figures, tables
from scripts.chaos_lib.rig import DEFAULT_FAULTS, FAULTS, TOPOLOGIES, Timing
from scripts.chaos_lib.scenario import Plan, error_lines, run

# The pytest's version (tests/e2e/test_chaos.py): every fault kind once, fewer processes.
SHORT = {
    "nodes": 2,
    "workers": 4,
    "racers": 3,
    "agents": 2,
    "warmup": 0.5,
    "clean_tail": 1.0,
    "pause": 2.5,
    "down": 0.5,
    "redis_faults": "redis-pause,redis-restart,node-kill",
    "sentinel_faults": "failover",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--store", default="redis,sentinel", help="topologies to run: redis, sentinel")
    parser.add_argument("--nodes", type=int, default=3, help="server nodes per topology")
    parser.add_argument("--redis-faults", default=",".join(DEFAULT_FAULTS["redis"]))
    parser.add_argument("--sentinel-faults", default=",".join(DEFAULT_FAULTS["sentinel"]))
    parser.add_argument("--rounds", type=int, default=1, help="go through the fault list this many times")
    parser.add_argument("--workers", type=int, default=8, help="concurrent mint-and-race loops")
    parser.add_argument("--racers", type=int, default=4, help="simultaneous consumes of each token")
    parser.add_argument("--agents", type=int, default=3, help="SDK agents the tokens are for")
    parser.add_argument("--hold", type=float, default=0.5, help="an opened session lasts up to this (s)")
    parser.add_argument("--late", type=float, default=1.5, help="a token is presented again after (s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="an answer later than this is a hang")
    parser.add_argument("--pause", type=float, default=3.0, help="SIGSTOP lasts this long (s)")
    parser.add_argument("--down", type=float, default=1.0, help="a killed process restarts after (s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the first fault (s)")
    parser.add_argument("--clean-tail", type=float, default=2.0, help="failure-free time that ends a fault")
    parser.add_argument("--max-recover", type=float, default=30.0, help="no recovery within this fails")
    parser.add_argument("--heartbeat-ttl", type=float, default=3.0, help="VOICE_AGENT_HEARTBEAT_TTL")
    parser.add_argument("--deadline", type=float, default=900.0, help="the whole run is stopped after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--short", action="store_true", help="the test suite's short version")
    args = parser.parse_args(argv)
    if args.short:
        for name, value in SHORT.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    return args


def _usage(message: str) -> NoReturn:
    """Bad options exit 2, as argparse's own errors do (1 means an invariant broke)."""
    print(f"scripts/chaos: {message}", file=sys.stderr)
    raise SystemExit(2)


def plans(args: argparse.Namespace) -> list[Plan]:
    out = []
    for topology in [t.strip() for t in args.store.split(",") if t.strip()]:
        if topology not in TOPOLOGIES:
            _usage(f"unknown --store {topology!r} (redis, sentinel)")
        faults = tuple(f.strip() for f in getattr(args, f"{topology}_faults").split(",") if f.strip())
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            _usage(f"unknown fault {unknown[0]!r} (one of {', '.join(FAULTS)})")
        out.append(
            Plan(
                topology,
                faults * args.rounds,
                nodes=args.nodes,
                warmup=args.warmup,
                clean_tail=args.clean_tail,
                max_recover=args.max_recover,
                heartbeat_ttl=args.heartbeat_ttl,
            )
        )
    return out


async def run_all(args: argparse.Namespace, results: list[Result]) -> None:
    load = Load(args.workers, args.racers, args.agents, args.hold, args.late, args.timeout)
    timing = Timing(args.pause, args.down)
    for plan in plans(args):
        ledger = Ledger()
        label = f"{plan.topology} ({plan.nodes} nodes)"
        result = Result(label, ledger, 0.0)
        results.append(result)
        rig = await run(plan, load, timing, ledger)
        result.seconds = ledger.now()
        result.error_lines = error_lines(rig)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    exit_on_termination()
    results: list[Result] = []
    started = time.monotonic()
    status = 0

    async def bounded() -> None:
        async with asyncio.timeout(args.deadline):
            await run_all(args, results)

    try:
        asyncio.run(bounded())
    except TimeoutError:
        print(
            f"scripts/chaos: the deadline of {args.deadline:g} s passed; partial figures below",
            file=sys.stderr,
        )
        status = 3
    except (RuntimeError, OSError) as exc:
        print(f"scripts/chaos: the rig failed: {exc}", file=sys.stderr)
        status = 2
    print(tables(results))
    print(f"\nwall time {time.monotonic() - started:.0f} s; command: scripts/chaos {' '.join(sys.argv[1:])}")
    broken = [f"{r.label}: {problem}" for r in results for problem in r.ledger.broken()]
    for r in results:
        for line in r.error_lines[:5]:
            print(f"{r.label} error log: {line}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps([figures(r) for r in results], indent=2))
    if broken:
        print("\nINVARIANTS BROKEN:\n  " + "\n  ".join(broken), file=sys.stderr)
        return 1
    return status
