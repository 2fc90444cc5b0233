"""``scripts/bench``: one run, one table (issue 6). See ``--help`` and README "Benchmarks"."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.bench_lib import report
from scripts.bench_lib.agent import AgentRefused
from scripts.bench_lib.children import ChildFailed, Children, exit_on_termination
from scripts.bench_lib.results import MemoryPoint, Row
from scripts.bench_lib.servers import ROOT, SERVERS, start_redis
from scripts.bench_lib.suite import ROW_KEYS, Plan, Suite
from scripts.bench_lib.token_memory import measure
from scripts.bench_lib.wrk import Load, WrkFailed, WrkMissing, wrk_version
from scripts.bench_lib.wsload import MintFailed


@dataclass(frozen=True)
class Defaults:
    duration: int  # seconds per row
    warmup: int  # seconds of discarded wrk load before each wrk row
    ws_tokens: int | None  # None: enough for the consume rows' duration
    memory_at: tuple[int, ...]


FULL = Defaults(duration=10, warmup=2, ws_tokens=None, memory_at=(1_000, 100_000))
QUICK = Defaults(duration=1, warmup=0, ws_tokens=300, memory_at=(1_000, 5_000))


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 1_000_000:
        raise argparse.ArgumentTypeError("token counts must be between 1 and 1,000,000")
    return sizes


def _rows(text: str) -> list[str]:
    rows = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [r for r in rows if r not in ROW_KEYS]
    if unknown or not rows:
        raise argparse.ArgumentTypeError(f"rows are {','.join(ROW_KEYS)}; got {text!r}")
    return [r for r in ROW_KEYS if r in rows]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure our mint and consume paths against naive baselines in one run (loopback only).",
    )
    p.add_argument("--duration", type=_positive, default=None, help="seconds per row (default 10)")
    p.add_argument("--connections", type=_positive, default=50, help="wrk connections (default 50)")
    p.add_argument("--threads", type=_positive, default=2, help="wrk threads (default 2)")
    p.add_argument(
        "--warmup", type=int, default=None, help="seconds of discarded load before each wrk row (2)"
    )
    p.add_argument("--server", choices=[*SERVERS, "both"], default="uvicorn", help="ASGI server (uvicorn)")
    p.add_argument(
        "--logs", choices=["off", "on"], default="off", help="per-request logs on both sides (off)"
    )
    p.add_argument("--inspect", choices=["off", "on"], default="off", help="our server's VOICE_INSPECT (off)")
    p.add_argument("--rows", type=_rows, default=list(ROW_KEYS), help="subset, e.g. a,c (default all)")
    p.add_argument("--ws-tokens", type=_positive, default=None, help="tokens per consume row (auto)")
    p.add_argument("--ws-concurrency", type=_positive, default=None, help="sockets at once (= connections)")
    p.add_argument(
        "--memory-at", type=_sizes, default=None, help="outstanding-token counts (default 1000,100000)"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the Redis bytes-per-token measurement")
    p.add_argument("--passes", type=_positive, default=1, help="run every row N times; report medians (1)")
    p.add_argument("--quick", action="store_true", help="1 s rows, few tokens: a smoke run (~20 s)")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' logs and print where")
    return p


def _plan(opts: argparse.Namespace) -> tuple[Plan, list[int]]:
    defaults = QUICK if opts.quick else FULL
    duration = opts.duration or defaults.duration
    warmup = opts.warmup if opts.warmup is not None else defaults.warmup
    # Enough tokens that the consume rows run their whole duration at the rates seen on 2 cores
    # (up to ~5k/s), few enough that minting them (~2.5k/s from our server) stays well inside the
    # tokens' 60 s lifetime. A row that runs out ends early: its secs column says so.
    ws_tokens = opts.ws_tokens or defaults.ws_tokens or min(50_000, 5_000 * duration)
    memory_at = opts.memory_at or list(defaults.memory_at)
    load = Load(opts.connections, opts.threads, duration)
    plan = Plan(
        load,
        warmup,
        opts.rows,
        ws_tokens,
        opts.ws_concurrency or opts.connections,
        opts.logs == "on",
        opts.inspect == "on",
    )
    return plan, ([] if opts.no_memory else memory_at)


def _ensure_granian() -> None:
    if importlib.util.find_spec("granian") is not None:
        return
    print("scripts/bench: installing granian from PyPI into this venv", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "granian"], check=True, timeout=300)


async def _bench(
    plan: Plan, servers: Sequence[str], memory_at: Sequence[int], children: Children, passes: int
) -> int:
    facts = report.machine_facts(wrk_version(), ROOT)  # before we load the machine ourselves
    redis = start_redis(children, "redis")
    by_server: dict[str, list[list[Row]]] = {}
    for server in servers:
        by_server[server] = []
        for number in range(passes):
            if passes > 1:
                print(f"  .. pass {number + 1} of {passes}", file=sys.stderr, flush=True)
            by_server[server].append(await Suite(plan, children, redis, server).run())
    points: list[MemoryPoint] = []
    if memory_at:
        print(f"  .. Redis bytes per token at {', '.join(f'{n:,}' for n in memory_at)}", file=sys.stderr)
        memory_redis = start_redis(children, "redis-memory")
        url = f"redis://127.0.0.1:{memory_redis.port}/0"
        points = await measure(url, memory_at, budget=60 + max(memory_at) / 500)
        children.stop(memory_redis.proc)
    _print(facts, plan, by_server, points)
    return 0


def _print(
    facts: list[str], plan: Plan, runs: dict[str, list[list[Row]]], points: Sequence[MemoryPoint]
) -> None:
    passes = len(next(iter(runs.values())))
    by_server = {server: report.median_rows(rows) for server, rows in runs.items()}
    load = plan.load
    out = [
        "",
        ("$ scripts/bench " + shlex.join(sys.argv[1:])).rstrip(),
        *facts,
        f"wrk rows: wrk -t{load.threads} -c{load.connections} -d{load.duration}s --latency "
        f"(after {plan.warmup}s warm-up); ws rows: Python generator, {plan.ws_concurrency} sockets at once, "
        f"{load.duration}s or {plan.ws_tokens:,} pre-minted tokens; per-request logs "
        f"{'on' if plan.logs else 'off'}",
    ]
    if passes > 1:
        out.append(
            f"{passes} passes: each row is the pass with the median rate; each ratio is the median "
            "of the ratios within each pass (every pass's value follows it)"
        )
    for server, rows in by_server.items():
        medians, per_pass = report.median_ratios(runs[server])
        out += ["", f"server: {server}", *report.table(rows), "", *report.ratio_lines(medians, per_pass)]
    if len(by_server) > 1:
        out += ["", "uvicorn vs granian (same app, same load)", *report.server_comparison(by_server)]
    if points:
        out += ["", "Redis memory per outstanding token (vs:tok:<jti> via RedisStore.issue_token)"]
        out += report.memory_lines(points)
    flagged = [r.key for rows in by_server.values() for r in rows if r.result.error_share > 0.001]
    if flagged:
        out += ["", f"! rows with more than 0.1% errors (not a valid measurement): {', '.join(flagged)}"]
    print("\n".join(out), flush=True)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    # uvloop for the generator when present: the consume rows' client then costs the CPUs less.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    plan, memory_at = _plan(opts)
    servers = list(SERVERS) if opts.server == "both" else [opts.server]
    try:
        wrk_version()
        if "granian" in servers:
            _ensure_granian()
    except WrkMissing as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        return 2
    exit_on_termination()
    workdir = Path(tempfile.mkdtemp(prefix="voice-bench-"))
    children = Children(workdir)
    try:
        return _run(_bench(plan, servers, memory_at, children, opts.passes))
    except (ChildFailed, WrkFailed, MintFailed, AgentRefused, TimeoutError) as exc:
        print(f"scripts/bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scripts/bench: interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if opts.keep_logs:
            print(f"scripts/bench: logs in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
