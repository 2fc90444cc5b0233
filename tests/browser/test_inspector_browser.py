"""The inspector page (/_voice/ui) in real headless Chromium against a real server process, in a
loopback-only network namespace (the set-up of ``test_demo_browser.py``). A screenshot is kept
as a test artefact in ``artefacts/inspector-ui.png`` (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.test_demo_browser import ROOT, run_driver

DRIVER = Path(__file__).with_name("inspector_driver.py")
SCREENSHOT = ROOT / "artefacts" / "inspector-ui.png"
pytestmark = pytest.mark.browser


def test_the_inspector_page_shows_a_chat_its_token_timeline_and_the_live_journal() -> None:
    """Loaded without a key the page says the admin key is required; given the key it follows
    the journal live, and a mint plus a chat made after that appear: the token consumed by the
    chat's call, the session, its timeline when clicked, the refused mint in the journal, and an
    injected fault in the faults panel."""
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    result = run_driver(DRIVER, str(SCREENSHOT))
    assert result["interfaces"] == ["lo"]
    assert "admin_key_required" in result["without_key"]
    assert "store memory" in result["health"]
    assert result["token_row"].split("\t")[2:5] == ["chat", "ui-agent", "consumed"]
    assert result["call_id"] in result["token_row"]
    assert result["session_row"].split("\t")[:3] == [result["call_id"], "chat", "ui-agent"]
    assert {"consume.allowed", "mint.allowed", "mint.refused", "session.start"} <= set(
        result["journal_kinds"]
    )
    assert ["browser->server", "message"] in result["timeline"]
    assert ["agent->server", "bot.reply"] in result["timeline"]
    assert ["server->browser", "chat.done"] in result["timeline"]
    assert result["errors_after_key"] == [], result["errors_after_key"]
    assert result["console"] == [], result["console"]
    assert result["foreign_requests"] == []
    assert result["fault_row"] == [result["fault_id"], "consume", "fail"]
    # The only refused request: the API before the key was given.
    assert result["refused"] == [f"401 {result['url']}/_voice/health"], result["refused"]
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000
