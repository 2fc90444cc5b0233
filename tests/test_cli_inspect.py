"""``voice-server inspect``: the inspection API from a shell, run as a user runs it (a
subprocess) against real server processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.procs import ROOT, ServerProcess, free_port, start_server

KEY = "sk_test_cli_inspect_0123456789ab"
SECRET = "cli-inspect-secret-0123456789abcdef"


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "inspect", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def closed() -> Iterator[ServerProcess]:
    """A production server with inspection off (the default)."""
    proc = start_server({"VOICE_TOKEN_SECRET": SECRET, "VOICE_API_KEYS": f"acme:{KEY}"})
    yield proc
    proc.stop()


@pytest.mark.parametrize("action", [["tokens"], ["journal"], ["sessions"], ["fault", "list"], ["clock"]])
def test_a_server_with_inspection_off_is_one_clear_line_and_exit_1(
    closed: ServerProcess, action: list[str]
) -> None:
    result = inspect("--url", closed.url, *action)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert "inspection is off" in result.stderr and "(not_found)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = inspect("--url", url, "tokens")
    assert result.returncode == 1
    assert result.stderr.startswith(f"voice-server: cannot reach {url}"), result.stderr
    assert result.stderr.count("\n") == 1


def test_a_fault_param_without_a_value_is_a_usage_error(closed: ServerProcess) -> None:
    result = inspect("--url", closed.url, "fault", "add", "store", "slow", "--param", "delay_ms")
    assert result.returncode == 2
    assert "--param wants NAME=VALUE" in result.stderr


def test_clock_takes_advance_or_reset_not_both() -> None:
    result = inspect("clock", "--advance", "60", "--reset")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
