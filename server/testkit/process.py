"""A real voice-server for a test: booted as a subprocess on a free port, or one already running.

:meth:`VoiceServer.boot` runs ``python -m server serve --port 0 --ready-file F`` in production
mode with fresh secrets (an org API key, a token secret, an admin key) and inspection on, and
returns once the ready file is written and ``/readyz`` answers. The embedded memory store by
default; ``store_url`` for a Redis. :meth:`VoiceServer.attach` targets a server someone else
started (its API key and admin key are then the caller's to give).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from server.testkit.inspector import InspectionUnavailable, Inspector

if TYPE_CHECKING:
    from server.testkit.agent import VoiceAgent

T = TypeVar("T")
ORG = "test"
BOOT_SECONDS = 30.0


class VoiceServerError(Exception):
    """The server could not be started or reached; the message carries its log."""


class EventLoop:
    """One asyncio loop in a daemon thread: agents, chats and browser calls live on it, and sync
    test code waits on their results (no pytest-asyncio needed)."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="voice-testkit", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        import asyncio

        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class VoiceServer:
    """A server under test: ``url``, ``api_key`` (a secret key of org ``test``), ``admin_key``
    and ``inspector`` (the ``/_voice`` client)."""

    def __init__(
        self,
        url: str,
        api_key: str,
        admin_key: str | None,
        proc: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self.inspector = Inspector(self.url, admin_key)
        self.proc = proc
        self.log_path = log_path
        self.node_id: str | None = None
        self._loop: EventLoop | None = None
        self._agents: list[VoiceAgent] = []

    # -- life cycle --------------------------------------------------------------------------------
    @classmethod
    def boot(cls, store_url: str | None = None, env: Mapping[str, str] | None = None) -> VoiceServer:
        """Start a server process and wait until it is ready. ``env`` adds or overrides VOICE_*
        settings."""
        api_key = "sk_test_" + secrets.token_urlsafe(24)
        admin_key = "vadm_" + secrets.token_urlsafe(32)
        workdir = Path(tempfile.mkdtemp(prefix="voice-testkit-"))
        ready, log_path = workdir / "ready.json", workdir / "server.log"
        settings = {
            "VOICE_API_KEYS": f"{ORG}:{api_key}",
            "VOICE_TOKEN_SECRET": secrets.token_urlsafe(32),
            "VOICE_INSPECT": "1",
            "VOICE_ADMIN_KEYS": admin_key,
            # Everything on loopback: the browser stand-in's aiortc peer meets the server there.
            "VOICE_RTC_HOST_ADDRESSES": "127.0.0.1",
            "VOICE_STORE_URL": store_url or "memory://",
            "VOICE_LOG_FORMAT": "json",
        }
        # Nothing of the caller's VOICE_* environment (a CI job's VOICE_URL, a developer's
        # VOICE_DEV or VOICE_PUBLIC_URL): the server's settings are these and ``env``.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
        full_env.update(settings)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        command = [sys.executable, "-m", "server", "serve", "--port", "0", "--ready-file", str(ready)]
        with log_path.open("wb") as out:
            # This interpreter and fixed arguments: nothing here comes from outside the test run.
            proc = subprocess.Popen(command, env=full_env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            written = _wait_ready(proc, ready, log_path)
        except BaseException:
            _stop(proc)
            raise
        key = written.get("api_key") or api_key
        server = cls(written["url"], key, admin_key, proc, log_path)
        server.node_id = written.get("node_id")
        return server

    @classmethod
    def attach(cls, url: str, api_key: str, admin_key: str | None = None) -> VoiceServer:
        """A server that is already running at ``url``; fails unless ``/readyz`` answers."""
        try:
            response = httpx.get(url.rstrip("/") + "/readyz", timeout=5)
        except httpx.HTTPError as exc:
            raise VoiceServerError(f"no voice-server at {url}: {exc}") from None
        if response.status_code != 200:
            raise VoiceServerError(f"{url}/readyz answers {response.status_code}: {response.text[:200]}")
        return cls(url, api_key, admin_key)

    def log(self) -> str:
        """What the server process wrote so far (empty for an attached server)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def close(self) -> None:
        self.close_agents()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self.inspector.close()
        if self.proc is not None:
            _stop(self.proc)

    def __enter__(self) -> VoiceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close_agents(self) -> None:
        """Take every agent made by :meth:`agent` offline (their chats and calls end first)."""
        for agent in list(self._agents):
            agent.close()

    def reset(self) -> bool:
        """Back to a clean state between tests: this handle's agents offline, ``POST
        /_voice/reset``, the clock back to real time and no fault left. False when the server
        has inspection off and cannot be reset."""
        self.close_agents()
        try:
            self.inspector.reset()
        except InspectionUnavailable:
            return False
        for undo in (self.inspector.reset_clock, self.inspector.clear_faults):
            with contextlib.suppress(InspectionUnavailable):  # a server without that part of the API
                undo()
        return True

    # -- driving it --------------------------------------------------------------------------------
    @property
    def events(self) -> EventLoop:
        if self._loop is None:
            self._loop = EventLoop()
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        return self.events.run(coro, timeout)

    def agent(
        self,
        agent_id: str | None = None,
        channels: tuple[str, ...] = ("webrtc", "chat"),
        allowed_origins: list[str] | None = None,
        **config: Any,
    ) -> VoiceAgent:
        """A Python agent connected over ``/client`` and registered (online) once this returns;
        closed with the server, or by :meth:`VoiceAgent.close`."""
        from server.testkit.agent import VoiceAgent

        agent = VoiceAgent(self, agent_id or "agent-" + secrets.token_hex(4))
        self.run(agent.start(channels, allowed_origins, config))
        self._agents.append(agent)
        return agent

    def forget(self, agent: VoiceAgent) -> None:
        with contextlib.suppress(ValueError):
            self._agents.remove(agent)

    def mint(
        self,
        agent_id: str,
        channel: str = "chat",
        metadata: Mapping[str, Any] | None = None,
        origin: str | None = None,
        **params: str,
    ) -> httpx.Response:
        """``GET /{channel}/token`` as a backend does (Bearer key), or as a browser does
        (``origin`` given: no key, that ``Origin``). The response, whatever its status."""
        query: dict[str, str] = {"agent_id": agent_id, **params}
        if metadata is not None:
            query["metadata"] = json.dumps(metadata)
        headers = {"Origin": origin} if origin else {"Authorization": f"Bearer {self.api_key}"}
        return httpx.get(f"{self.url}/{channel}/token", params=query, headers=headers, timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], ready: Path, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VoiceServerError(
                f"voice-server exited with {proc.returncode} before it was ready:\n"
                + log_path.read_text(errors="replace")
            )
        if ready.exists():
            written: dict[str, Any] = json.loads(ready.read_text())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(written["url"] + "/readyz", timeout=2).status_code == 200:
                    return written
        time.sleep(0.05)
    raise VoiceServerError(
        f"voice-server not ready after {BOOT_SECONDS:g}s:\n" + log_path.read_text(errors="replace")
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
