"""Layers only point down (STYLE §12): cli → web/realtime → services → core + store; core is pure."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[1] / "server"
# What each layer may import from our own package (besides itself).
ALLOWED = {
    "core": {"errors"},
    "store": {"core", "errors"},
    "services": {"core", "store", "errors", "settings", "log", "logsink", "metrics"},
    "realtime": {"core", "store", "services", "errors", "settings", "log", "logsink", "metrics"},
    "web": {"core", "store", "services", "realtime", "errors", "settings", "log", "logsink", "metrics"},
}
THIRD_PARTY_IN_CORE = {"redis", "starlette", "aiortc", "av", "aioice", "websockets", "uvicorn", "httpx"}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_layer_imports_upwards() -> None:
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in (SERVER / layer).rglob("*.py"):
            for name in imports(path):
                parts = name.split(".")
                if parts[0] == "server" and len(parts) > 1 and parts[1] not in allowed | {layer}:
                    violations.append(f"{path.relative_to(SERVER)} imports {name}")
    assert not violations, "\n".join(violations)


def test_core_imports_only_the_stdlib_and_itsdangerous() -> None:
    bad = [
        f"{path.name}: {name}"
        for path in (SERVER / "core").rglob("*.py")
        for name in imports(path)
        if name.split(".")[0] in THIRD_PARTY_IN_CORE
    ]
    assert not bad, bad


def test_only_rtc_imports_aiortc() -> None:
    users = {
        str(path.relative_to(SERVER))
        for path in SERVER.rglob("*.py")
        for name in imports(path)
        if name.split(".")[0] in ("aiortc", "av", "aioice")
    }
    # testkit/browser.py is the test kit's browser stand-in (a peer, not the server): it sits
    # above every layer and nothing of the server imports it.
    assert users <= {"realtime/rtc.py", "realtime/media.py", "testkit/browser.py"}, users


def test_only_settings_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(SERVER))
        for path in SERVER.rglob("*.py")
        if "os.environ" in path.read_text() or "getenv(" in path.read_text()
    ]
    # The test kit runs in the user's pytest process, not in the server: its plugin reads its
    # own VOICE_TEST_* options, and it hands its environment on to the server it boots.
    assert sorted(readers) == ["settings.py", "testkit/plugin.py", "testkit/process.py"], readers
