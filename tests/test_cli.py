"""``voice-server`` start-up lines: the version, the production summary and its warnings."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from server import cli
from server.settings import Settings
from tests.support.procs import ROOT, start_server


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
