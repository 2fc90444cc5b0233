"""``scripts/bench_capacity``: what one server process holds (issue 11 item 4), loopback only.

Idle chat sockets: our server (production mode, logs as shipped, Redis store) with the bench
agent registered; the mint rate (wrk, secret key) and the consume rate (the e2 generator) are
measured with no session open, then ``--sockets`` chat sessions are opened and left idle (each
answers the server's pings, as a browser does), the server's RSS is read before and after, and
mint and consume are measured again while they are open. Printed: RSS per socket (target
≤ 100 KB) and each rate with the sockets open ÷ without them (target ≥ 0.8), both from the same
run. Every step is bounded; the whole run by ``--deadline``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.bench_lib import report
from scripts.bench_lib.agent import AGENT_ID, BenchAgent
from scripts.bench_lib.children import LOOPBACK, ChildFailed, Children, exit_on_termination
from scripts.bench_lib.cpu import group_cpu_seconds
from scripts.bench_lib.servers import ROOT, start_ours, start_redis
from scripts.bench_lib.wrk import Load, WrkFailed, WrkMissing, run_wrk, wrk_version
from scripts.bench_lib.wsclient import OP_CLOSE, Refused, upgrade_request
from scripts.bench_lib.wsload import MintFailed, consume_load, premint

RSS_TARGET_KB = 100
RATE_TARGET = 0.8
IDLE_SECONDS = 5.0
OP_PING, OP_PONG = 0x9, 0xA


class IdleSocket:
    """An open chat session that sends nothing and answers pings (RFC 6455 §5.5.2)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.closed_with = ""  # the server's close code and reason, or how the socket ended
        self.task = asyncio.create_task(self._answer_pings())

    @classmethod
    async def open(cls, port: int, path: str) -> IdleSocket:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(upgrade_request(LOOPBACK, port, path))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise Refused(head.split(b"\r\n", 1)[0].decode("latin-1", "replace"))
        return cls(reader, writer)

    async def _answer_pings(self) -> None:
        self.closed_with = "EOF"
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                first, second = await self._reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self._reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self._reader.readexactly(8))
                payload = await self._reader.readexactly(length)
                opcode = first & 0x0F
                if opcode == OP_PING and len(payload) < 126:  # a masked pong, zero mask
                    self._writer.write(bytes([0x80 | OP_PONG, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                elif opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.closed_with = f"{code} {payload[2:].decode('utf-8', 'replace')}".strip()
                    return

    def close(self) -> None:
        self.task.cancel()
        self._writer.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ChildFailed(f"no VmRSS for pid {pid}")


async def _rates(port: int, api_key: str, load: Load, consume_tokens: int) -> tuple[float, float]:
    bearer = {"Authorization": f"Bearer {api_key}"}
    mint = await run_wrk(load, f"http://{LOOPBACK}:{port}/webrtc/token?agent_id={AGENT_ID}", bearer)
    tokens = await premint(LOOPBACK, port, f"/chat/token?agent_id={AGENT_ID}", bearer, consume_tokens, 50)
    consume = await consume_load(
        LOOPBACK, port, [f"/chat/ws?token={t}" for t in tokens], 50, load.duration, "chat.connected"
    )
    if mint.error_share > 0.001 or consume.errors:
        raise WrkFailed(f"errors while measuring: mint {mint.errors}, consume {consume.errors}")
    return mint.rate, consume.rate


async def idle_sockets(children: Children, sockets: int, load: Load, consume_tokens: int) -> list[str]:
    redis = start_redis(children, "redis")
    ours = start_ours(children, "uvicorn", redis, logs=True)
    port, pid = ours.endpoint.port, ours.endpoint.proc.pid
    bearer = {"Authorization": f"Bearer {ours.api_key}"}
    held: list[IdleSocket] = []
    try:
        async with await BenchAgent.connect(ours.endpoint.ws, ours.api_key):
            _progress(f"mint and consume with no idle socket ({load.duration}s each)")
            mint0, consume0 = await _rates(port, ours.api_key, load, consume_tokens)
            tokens = await premint(LOOPBACK, port, f"/chat/token?agent_id={AGENT_ID}", bearer, sockets, 50)
            rss0 = rss_kb(pid)
            _progress(f"opening {sockets:,} idle chat sockets")
            began = time.perf_counter()
            queue = iter(tokens)

            async def opener() -> None:
                for token in queue:
                    held.append(await asyncio.wait_for(IdleSocket.open(port, f"/chat/ws?token={token}"), 10))

            await asyncio.wait_for(asyncio.gather(*(opener() for _ in range(50))), 30 + sockets / 100)
            opened = time.perf_counter() - began
            await asyncio.sleep(1.0)  # the sessions' first frames and the agent's frames settle
            rss1 = rss_kb(pid)
            cpu0 = group_cpu_seconds(pid)
            await asyncio.sleep(IDLE_SECONDS)  # what holding them costs with nothing to do
            idle_cpu = (group_cpu_seconds(pid) - cpu0) / IDLE_SECONDS
            alive = sum(not s.task.done() for s in held)
            _progress(f"mint and consume with {alive:,} idle sockets open")
            mint1, consume1 = await _rates(port, ours.api_key, load, consume_tokens)
            still = sum(not s.task.done() for s in held)
            closes = collections.Counter(s.closed_with for s in held if s.task.done())
    finally:
        for socket in held:
            socket.close()
        children.stop(ours.endpoint.proc)
        children.stop(redis.proc)
    per_socket = (rss1 - rss0) / max(1, len(held))
    mint_ratio, consume_ratio = mint1 / mint0, consume1 / consume0
    return [
        f"idle chat sockets: {len(held):,} opened in {opened:.1f}s ({alive:,} open after 1 s, "
        f"{still:,} still open after the loaded rows)"
        + (f"; closed by the server: {dict(closes.most_common(3))}" if closes else ""),
        f"server CPU while they idle: {idle_cpu:.0%} of a core ({IDLE_SECONDS:.0f} s)",
        f"server RSS {rss0 / 1024:,.1f} MiB -> {rss1 / 1024:,.1f} MiB: {per_socket:,.1f} KB per socket"
        f"  target ≤ {RSS_TARGET_KB} KB {'meets' if per_socket <= RSS_TARGET_KB else 'MISSES'}",
        f"mint    without {mint0:>9,.0f}/s  with {mint1:>9,.0f}/s  {mint_ratio:.2f}x"
        f"  target ≥ {RATE_TARGET} {'meets' if mint_ratio >= RATE_TARGET else 'MISSES'}",
        f"consume without {consume0:>9,.0f}/s  with {consume1:>9,.0f}/s  {consume_ratio:.2f}x"
        f"  target ≥ {RATE_TARGET} {'meets' if consume_ratio >= RATE_TARGET else 'MISSES'}",
    ]


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/bench_capacity",
        description="What one server process holds: idle chat sockets (RSS per socket, rates while open).",
    )
    p.add_argument("--sockets", type=int, default=10_000, help="idle chat sockets to hold (10000)")
    p.add_argument("--duration", type=int, default=5, help="seconds per rate measurement (5)")
    p.add_argument("--deadline", type=float, default=600, help="give up after this many seconds (600)")
    p.add_argument("--quick", action="store_true", help="1,000 sockets, 2 s rows: a smoke run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    sockets, duration = (1_000, 2) if opts.quick else (opts.sockets, opts.duration)
    if not 1 <= sockets <= 50_000:
        print("scripts/bench_capacity: --sockets must be between 1 and 50,000", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = sockets + 1_000
    if soft < need:  # our sockets, and the server's (it inherits the limit)
        if hard != resource.RLIM_INFINITY and hard < need:
            print(f"scripts/bench_capacity: {sockets:,} sockets need ulimit -n ≥ {need:,}", file=sys.stderr)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        wrk = wrk_version()
    except WrkMissing as exc:
        print(f"scripts/bench_capacity: {exc}", file=sys.stderr)
        return 2
    exit_on_termination()
    facts = report.machine_facts(wrk, ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="voice-capacity-"))
    children = Children(workdir)
    load = Load(connections=50, threads=2, duration=duration)
    try:
        lines = asyncio.run(
            asyncio.wait_for(idle_sockets(children, sockets, load, consume_tokens=3_000), opts.deadline)
        )
    except (ChildFailed, WrkFailed, MintFailed, Refused, TimeoutError, OSError) as exc:
        print(f"scripts/bench_capacity: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(["", "$ scripts/bench_capacity " + " ".join(argv or sys.argv[1:]), *facts, *lines]))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
