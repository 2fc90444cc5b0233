"""The processes under test: a redis-server, the naive baselines and our server, on loopback.

Both apps run under the same server with the same settings: uvicorn as ``voice-server serve``
runs it (uvloop, httptools, no proxy headers, no server header, 64 KiB frames, 20 s pings), or
granian (``--interface asgi``, one worker, uvloop). ``logs`` decides for both: off = no access
log anywhere (the default: we measure the request path); on = one line per request on both
sides (uvicorn's access log for the baselines, our AccessLog at INFO for ours).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.bench_lib.children import LOOPBACK, ChildFailed, Children, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("uvicorn", "granian")
HIGH_RATE = "1000000/second"  # counted on every mint, never refused during a run
BENCH_ORG = "bench"


@dataclass(frozen=True)
class Endpoint:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"


def start_redis(children: Children, name: str) -> Endpoint:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ChildFailed("redis-server is not installed (apt-get install redis-server, or run scripts/test)")
    port = free_port()
    workdir = children.workdir / name
    workdir.mkdir(exist_ok=True)
    args = [
        binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--protected-mode", "no",
    ]  # fmt: skip
    proc = children.start(name, args)
    children.wait_ready(name, proc, port)
    return Endpoint(port, proc)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_", "GRANIAN_", "BENCH_"))}


def _granian(target: str, port: int, logs: bool, factory: bool = False) -> list[str]:
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--host", LOOPBACK, "--port", str(port),
        "--workers", "1", "--loop", "uvloop", "--log-level", "info" if logs else "warning",
        *(["--access-log"] if logs else []), *(["--factory"] if factory else []), target,
    ]  # fmt: skip


def start_baselines(children: Children, server: str, redis: Endpoint, logs: bool) -> Endpoint:
    port = free_port()
    env = {**_base_env(), "BENCH_REDIS_URL": f"redis://{LOOPBACK}:{redis.port}/0"}
    target = "scripts.bench_baselines:app"
    if server == "granian":
        args = _granian(target, port, logs)
    else:
        # The options `voice-server serve` passes to uvicorn.run, as flags.
        args = [
            sys.executable, "-m", "uvicorn", target, "--host", LOOPBACK, "--port", str(port),
            "--ws-max-size", str(64 * 1024), "--ws-ping-interval", "20", "--ws-ping-timeout", "20",
            "--no-proxy-headers", "--no-server-header",
            "--log-level", "info" if logs else "warning", *([] if logs else ["--no-access-log"]),
        ]  # fmt: skip
    name = f"baselines-{server}"
    proc = children.start(name, args, env, cwd=ROOT)
    children.wait_ready(name, proc, port)
    _wait_http(f"http://{LOOPBACK}:{port}/bare", name, children)
    return Endpoint(port, proc)


@dataclass(frozen=True)
class Ours:
    endpoint: Endpoint
    api_key: str


def start_ours(children: Children, server: str, redis: Endpoint, logs: bool, inspect: bool = False) -> Ours:
    port = free_port()
    api_key = "sk_live_bench_" + secrets.token_urlsafe(24)
    env = {
        **_base_env(),
        "VOICE_HOST": LOOPBACK,
        "VOICE_PORT": str(port),
        "VOICE_STORE_URL": f"redis://{LOOPBACK}:{redis.port}/0",
        "VOICE_TOKEN_SECRET": secrets.token_urlsafe(32),
        "VOICE_API_KEYS": f"{BENCH_ORG}:{api_key}",
        "VOICE_RATE_LIMIT_KEY": HIGH_RATE,
        "VOICE_RATE_LIMIT_PUBLIC": HIGH_RATE,
        # Room for every chat session the consume row opens; a refusal would not be a measurement.
        "VOICE_MAX_SESSIONS": "100000",
        "VOICE_MAX_SESSIONS_PER_ORG": "100000",
        "VOICE_MOCK_AGENT": "off",
        "VOICE_LOG_LEVEL": "INFO" if logs else "WARNING",
        "VOICE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
        # --inspect on: the inspection API's journal on the measured paths (issue 10)
        "VOICE_INSPECT": "1" if inspect else "0",
        **({"VOICE_ADMIN_KEYS": secrets.token_urlsafe(32)} if inspect else {}),
    }
    if server == "granian":
        args = _granian("scripts.asgi_entry:create", port, logs=False, factory=True)
    else:
        args = [sys.executable, "-m", "server", "serve", "--port", str(port)]
    name = f"voice-server-{server}"
    proc = children.start(name, args, env, cwd=ROOT)
    children.wait_ready(name, proc, port)
    _wait_http(f"http://{LOOPBACK}:{port}/healthz", name, children)
    return Ours(Endpoint(port, proc), api_key)


def _wait_http(url: str, name: str, children: Children, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise ChildFailed(f"{name}: {url} never answered 200:\n{children.log_tail(name)}")
