"""The README's "Use it in your tests" examples run as written: the pytest example in a
throwaway project outside the package (the plugin comes from the installed package alone), and
the compose service's command and environment accepted by a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.support.procs import ROOT, free_port, wait_for_port

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.find("\n## ", start + 1)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section("Use it in your tests"), re.S)


def test_the_pytest_example_passes_in_a_fresh_project(tmp_path: Path) -> None:
    example = next(b for b in blocks("python") if "voice_agent" in b)
    project = tmp_path / "app"
    project.mkdir()
    (project / "test_voice.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_") and k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tests = len(re.findall(r"^def test_", example, re.M))
    assert tests >= 2 and f"{tests} passed" in result.stdout, result.stdout


def test_the_compose_service_starts_with_its_command_and_environment(tmp_path: Path) -> None:
    compose = yaml.safe_load(next(b for b in blocks("yaml") if "services:" in b))
    voice = compose["services"]["voice"]
    assert compose["services"]["app"]["depends_on"] == {"voice": {"condition": "service_healthy"}}
    port = free_port()
    command = [port if arg == "8080" else arg for arg in voice["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    env.update(voice["environment"])
    log = tmp_path / "voice.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", *map(str, command)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port, timeout=20, proc=proc)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        key = compose["services"]["app"]["environment"]["VOICE_KEY"]
        mint = httpx.get(
            url + "/chat/token", params={"agent_id": "demo"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert mint.status_code == 200, mint.text + log.read_text()
        assert mint.json()["server"] == compose["services"]["app"]["environment"]["VOICE_URL"]
    finally:
        proc.terminate()
        proc.wait(10)
