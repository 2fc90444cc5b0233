"""``voice-server`` start-up lines: the version, the production summary and its warnings."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from server import cli
from server.settings import Settings
from tests.support.procs import ROOT, free_port, start_server


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stdout.strip() == f"voice-server {cli.version()}"
    assert cli.version() != "unknown"  # installed in the venv the tests run from


@pytest.mark.parametrize("public_url", ["", "https://node-a.example.com"])
async def test_production_start_up_is_one_summary_line_and_says_when_the_url_is_unreachable(
    caplog: pytest.LogCaptureFixture, public_url: str
) -> None:
    settings = Settings.from_env(
        {
            "VOICE_TOKEN_SECRET": "s" * 32,
            "VOICE_HOST": "0.0.0.0",
            "VOICE_PUBLIC_URL": public_url,
            "VOICE_STORE_URL": "redis://:secret-pw@redis.internal:6379/0",
            "VOICE_NODE_ID": "node-a",
        }
    )
    with caplog.at_level(logging.INFO, logger="voice.node"):
        await cli._summary(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    summary, *warnings = caplog.records
    assert summary.getMessage() == "voice-server started"
    fields = summary.__dict__["fields"]
    assert fields["node_id"] == "node-a" and fields["version"] == cli.version()
    assert fields["store"] == "redis://:***@redis.internal:6379/0"
    if public_url:
        assert not warnings and fields["public_url"] == public_url
    else:
        (warning,) = warnings
        assert warning.levelno == logging.WARNING and "VOICE_PUBLIC_URL" in warning.getMessage()


def test_serve_port_wins_over_a_stale_voice_port() -> None:
    server = start_server({"VOICE_PORT": "not-a-port"}, args=["--dev"])  # start_server passes --port
    try:
        assert "voice-server (dev mode) on" in server.log()
    finally:
        server.stop()


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_file(path: Path, proc: subprocess.Popen[str], seconds: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no ready file"
        time.sleep(0.05)
    content: dict[str, object] = json.loads(path.read_text())
    return content


def test_port_0_and_the_ready_file_tell_a_ci_job_where_the_server_is(tmp_path: Path) -> None:
    """Issue 10 item 4: `serve --port 0 --ready-file PATH`, then `wait URL`."""
    ready = tmp_path / "voice.json"
    proc = _spawn(["serve", "--dev", "--port", "0", "--ready-file", str(ready)], {})
    try:
        content = _wait_for_file(ready, proc)
        url, key = str(content["url"]), str(content["api_key"])
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert key.startswith("sk_live_") and stat.S_IMODE(ready.stat().st_mode) == 0o600
        waited = subprocess.run(
            [sys.executable, "-m", "server", "wait", url, "--timeout", "10"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert waited.returncode == 0 and waited.stdout.strip() == f"ready: {url}"
        minted = httpx.get(
            url + "/chat/token", params={"agent_id": "demo"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert (
            minted.status_code == 200 and minted.json()["server"] == url
        )  # the mock agent is on the bound port
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"voice-server (dev mode) on {url}" in out


def test_wait_gives_up_after_its_timeout() -> None:
    port = free_port()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "server", "wait", f"http://127.0.0.1:{port}", "--timeout", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and 1 <= time.monotonic() - started < 10
    assert result.stderr.startswith(f"voice-server: http://127.0.0.1:{port}/readyz not ready after 1s")


def test_a_production_node_on_port_0_logs_the_port_it_got(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {"VOICE_TOKEN_SECRET": "s" * 32, "VOICE_API_KEYS": "acme:sk_test_ready_0123456789abcdef"}
    proc = _spawn(["serve", "--port", "0", "--ready-file", str(ready)], env)
    try:
        content = _wait_for_file(ready, proc)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert content["api_key"] == "sk_test_ready_0123456789abcdef"
    started = next(json.loads(line) for line in out.splitlines() if '"voice-server started"' in line)
    assert started["public_url"] == content["url"] and started["listen"].endswith(
        str(content["url"]).rsplit(":", 1)[1]
    )
