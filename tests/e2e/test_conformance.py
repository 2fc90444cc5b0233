"""``voice-server conformance URL`` against a real server process: every HTTP-visible vector
passes (without a key, and with one: origin verdicts and /client frames too), and a vector the
deployment does not meet makes it fail, naming the check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ROOT, ServerProcess, start_server

KEY = "sk_test_conformance_0123456789abcdef"
VECTORS = ROOT / "tests" / "vectors"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {"VOICE_TOKEN_SECRET": "conformance-secret-0123456789abcdef0123", "VOICE_API_KEYS": f"acme:{KEY}"}
    )
    yield proc
    proc.stop()


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server", "conformance", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_every_public_vector_passes(server: ServerProcess) -> None:
    result = conformance(server.url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].endswith(" passed, 0 failed") and int(lines[-1].split()[0]) >= 25
    assert not [line for line in lines if line.startswith(("FAIL", "SKIP"))]
    assert any("token 'signature first char changed'" in line for line in lines)
    assert any("webhook with signature 'not hex'" in line for line in lines)


def test_with_a_key_the_origin_verdicts_and_client_frames_pass_too(server: ServerProcess) -> None:
    result = conformance(server.url, "--api-key", KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    verdicts = json.loads((VECTORS / "origins.json").read_text())["verdicts"]
    frames = json.loads((VECTORS / "client_frames.json").read_text())["frames"]
    assert sum(" against " in line for line in lines) == len(verdicts)
    assert sum(line.startswith("PASS /client frame") for line in lines) == len(frames)
    assert lines[-1].endswith(" passed, 0 failed")


def test_a_vector_the_deployment_does_not_meet_fails_the_run(server: ServerProcess, tmp_path: Path) -> None:
    shutil.copytree(VECTORS, tmp_path / "vectors")
    origins = json.loads((tmp_path / "vectors" / "origins.json").read_text())
    origins["verdicts"][0]["allowed"] = False  # https://app.example.com is in fact allowed
    (tmp_path / "vectors" / "origins.json").write_text(json.dumps(origins))
    result = conformance(server.url, "--api-key", KEY, "--vectors", str(tmp_path / "vectors"))
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert (
        len(failed) == 1 and "https://app.example.com against https://app.example.com: refused" in failed[0]
    )
    assert result.stdout.splitlines()[-1].endswith(" passed, 1 failed")


def test_a_url_without_a_scheme_is_refused() -> None:
    result = conformance("voice.example.com")
    assert result.returncode == 2 and "must start with http" in result.stderr
