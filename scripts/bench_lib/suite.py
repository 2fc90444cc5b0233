"""One pass over the rows under one server: start the baselines and our server on a shared
redis-server, register the bench agent, measure each selected row, stop both servers."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from scripts.bench_lib.agent import AGENT_ID, ORIGIN, BenchAgent
from scripts.bench_lib.children import LOOPBACK, Children
from scripts.bench_lib.cpu import group_cpu_seconds
from scripts.bench_lib.results import Row
from scripts.bench_lib.servers import Endpoint, Ours, start_baselines, start_ours
from scripts.bench_lib.wrk import Load, WrkFailed, run_wrk
from scripts.bench_lib.wsload import consume_load, premint

ROW_KEYS = ("a", "b1", "b2", "c", "d", "e0", "e1", "e2")
LABELS = {
    "a": "bare JSON route (baseline)",
    "b1": "naive mint: one SET EX (baseline)",
    "b2": "naive redeem: one GETDEL over HTTP (baseline)",
    "c": "our mint, secret key: GET /webrtc/token",
    "d": "our mint, public path (Origin): GET /webrtc/token",
    "e0": "WS floor: raw ASGI accept + first frame (no Redis)",
    "e1": "naive WS: accept + GETDEL + first frame (baseline)",
    "e2": "our consume: /chat/ws upgrade to chat.connected",
}


@dataclass(frozen=True)
class Plan:
    load: Load
    warmup: int  # seconds of discarded wrk load before each wrk row
    rows: Sequence[str]
    ws_tokens: int  # tokens minted for each consume row
    ws_concurrency: int
    logs: bool
    inspect: bool = False  # our server with VOICE_INSPECT=1


def _progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


class Suite:
    def __init__(self, plan: Plan, children: Children, redis: Endpoint, server: str) -> None:
        self.plan = plan
        self.children = children
        self.redis = redis
        self.server = server

    async def run(self) -> list[Row]:
        _progress(f"starting the baselines and our server under {self.server}")
        baselines = start_baselines(self.children, self.server, self.redis, self.plan.logs)
        try:
            ours = start_ours(self.children, self.server, self.redis, self.plan.logs, self.plan.inspect)
            try:
                async with await BenchAgent.connect(ours.endpoint.ws, ours.api_key):
                    return [await self._row(key, baselines, ours) for key in self.plan.rows]
            finally:
                self.children.stop(ours.endpoint.proc)
        finally:
            self.children.stop(baselines.proc)

    async def _row(self, key: str, baselines: Endpoint, ours: Ours) -> Row:
        bearer = {"Authorization": f"Bearer {ours.api_key}"}
        mint = f"{ours.endpoint.http}/webrtc/token?agent_id={AGENT_ID}"
        wrk_rows: dict[str, tuple[str, dict[str, str]]] = {
            "a": (f"{baselines.http}/bare", {}),
            "b1": (f"{baselines.http}/naive/token", {}),
            "b2": (f"{baselines.http}/naive/redeem?token=spent", {}),
            "c": (mint, bearer),
            "d": (mint, {"Origin": ORIGIN}),
        }
        _progress(f"{self.server}: row {key} ({LABELS[key]})")
        if key in wrk_rows:
            url, headers = wrk_rows[key]
            target = baselines if key in ("a", "b1", "b2") else ours.endpoint
            return await self._wrk_row(key, target, url, headers)
        if key == "e0":
            return await self._ws_row(key, baselines, None, {}, lambda _: "/floor/ws", "connected")
        if key == "e1":
            return await self._ws_row(
                key, baselines, "/naive/token", {},
                lambda t: f"/naive/ws?token={quote(t)}", "connected",
            )  # fmt: skip
        return await self._ws_row(
            key, ours.endpoint, f"/chat/token?agent_id={AGENT_ID}", bearer,
            lambda t: f"/chat/ws?token={t}", "chat.connected",
        )  # fmt: skip

    async def _wrk_row(self, key: str, target: Endpoint, url: str, headers: dict[str, str]) -> Row:
        # One request first: a misconfigured row must fail loudly, not measure error pages.
        async with httpx.AsyncClient(timeout=10) as http:
            check = await http.get(url, headers=headers)
        if check.status_code != 200:
            raise WrkFailed(f"row {key}: GET {url} answered {check.status_code}: {check.text[:300]}")
        if self.plan.warmup > 0:
            await run_wrk(self.plan.load, url, headers, duration=self.plan.warmup)
        with Stopwatch(target) as watch:
            result = await run_wrk(self.plan.load, url, headers)
        return Row(key, LABELS[key], "wrk", result, watch.cpu, watch.wall)

    async def _ws_row(
        self,
        key: str,
        target: Endpoint,
        mint_path: str | None,  # None: the row needs no tokens
        headers: dict[str, str],
        ws_path: Callable[[str], str],
        first_event: str,
    ) -> Row:
        plan = self.plan
        if mint_path is None:
            tokens = [""] * plan.ws_tokens
        else:
            _progress(f"{self.server}: minting {plan.ws_tokens:,} tokens for row {key} (not timed)")
            began = time.perf_counter()
            tokens = await premint(
                LOOPBACK, target.port, mint_path, headers, plan.ws_tokens, plan.ws_concurrency
            )
            _progress(f"{self.server}: minted in {time.perf_counter() - began:.1f}s")
        paths = [ws_path(t) for t in tokens]
        with Stopwatch(target) as watch:
            result = await consume_load(
                LOOPBACK, target.port, paths, plan.ws_concurrency, plan.load.duration, first_event
            )
        return Row(key, LABELS[key], "ws", result, watch.cpu, watch.wall)


class Stopwatch:
    """Wall time and the CPU time of ``target``'s process group over a ``with`` block."""

    def __init__(self, target: Endpoint) -> None:
        self._pgid = target.proc.pid  # the server leads its own group (Children.start)
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Stopwatch:
        self._cpu0, self._t0 = group_cpu_seconds(self._pgid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = group_cpu_seconds(self._pgid) - self._cpu0
