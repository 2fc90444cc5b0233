"""The /demo page in real headless Chromium, talking WebRTC and chat to a real server process.

Everything runs in a loopback-only network namespace: this test re-executes ``driver.py`` under
``unshare -n`` (``-rn`` when not root) after ``ip link set lo up``, and the driver starts the
server (dev mode, ``VOICE_RTC_HOST_ADDRESSES=127.0.0.1``) and Chromium there. Chromium is the
Debian package on PATH; no browser is ever downloaded. A missing Chromium fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("driver.py")
pytestmark = pytest.mark.browser


def run_driver(driver: Path = DRIVER, *args: str) -> dict[str, Any]:
    """Run ``driver`` (with ``args``) in a loopback-only network namespace; the ``RESULT`` it printed."""
    for tool, package in (("chromium", "chromium"), ("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: scripts/test installs it (apt-get install {package})")
    namespace = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    command = [
        *namespace,
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        str(driver),
        *args,
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"driver exited {proc.returncode}:\n{proc.stderr[-8000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"driver printed no result:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_demo_page_talks_to_the_mock_agent_over_webrtc_and_chat() -> None:
    """Chromium loads /demo, mints through the public path, connects WebRTC (fake mic), says a line
    (inject_text), and gets the mock agent's echo spoken back: bot.word by bot.word, bot.finished,
    with RTP audio arriving; the chat echoes too; hanging up leaves no peer on the server."""
    result = run_driver()
    assert result["interfaces"] == ["lo"]
    assert result["mint_base"].startswith("http://127.0.0.1:")  # cross-origin mint from localhost
    assert result["greeting"], "the mock agent's greeting was not spoken"
    assert result["user_message"] == "hello from chromium"
    assert result["bot_words"] == ["You", "said:", "hello", "from", "chromium"]
    assert result["bot_text"] == "You said: hello from chromium"  # built from bot.word only
    assert result["bot_finished_ms"] > 0
    assert result["audio_before"]["packetsReceived"] > 0
    assert result["audio_after"]["bytesReceived"] > result["audio_before"]["bytesReceived"]
    assert "You said: hello from chromium" in result["transcript"]
    assert result["chat_done"] == "You said: hi chat" and result["chat_tokens"] >= 1
    assert result["errors"] == [] and result["console"] == []
    assert result["after_hangup"] == {"sessions": 0, "by_transport": {}, "peers": 0, "peers_built": 1}
