"""A page speaking @pinecall/web's frames (``web_client.js``) in real headless Chromium against a
real server process, in a loopback-only network namespace (``web_client_driver.py``).

Issue 18: a refused chat token and a refused mint reach the page as readable errors (item 4);
the idle warning and timeout fire while the page pings every second (item 10); the page
notices the agent's hangup within a second (item 11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_demo_browser import run_driver
from tests.browser.web_client_driver import IDLE_SECONDS, first_at

pytestmark = pytest.mark.browser
DRIVER = Path(__file__).with_name("web_client_driver.py")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run_driver(DRIVER)


def event_entry(log: list[dict[str, Any]], source: str, name: str) -> dict[str, Any]:
    """The first event ``name`` the page's ``source`` session received."""
    found = [e for e in log if e["source"] == source and e["what"] == "event" and e["data"]["event"] == name]
    assert found, f"{source} never received {name}"
    return found[0]


def test_a_refused_mint_is_readable_from_the_page(result: dict[str, Any]) -> None:
    assert result["interfaces"] == ["lo"]
    assert result["mint_refused"] == {
        "status": 404,
        "body": {"detail": "Agent 'nobody-here' is not online", "code": "agent_not_online"},
    }
    outcome = result["chat_unknown_agent"]
    assert outcome["status"] == "error" and outcome["error"].startswith("Token: 404 "), outcome
    assert "agent_not_online" in outcome["error"]


def test_a_refused_chat_token_shows_its_error_instead_of_connecting(result: dict[str, Any]) -> None:
    assert result["chat_first_use"] == {"status": "connected", "error": None}
    outcome = result["chat_spent"]
    assert outcome["status"] == "error", outcome  # not left "connecting"
    assert outcome["error"] == "token has already been used", outcome  # the detail, not "WebSocket error"
    closes = [e["data"] for e in result["log"] if e["source"] == "chat-spent" and e["what"] == "close"]
    assert closes == [{"code": 1008, "reason": "token_spent"}]


def test_idle_warning_and_timeout_fire_while_the_page_pings(result: dict[str, Any]) -> None:
    log = result["log"]
    opened = first_at(log, "idle", "channel-open")
    warned = event_entry(log, "idle", "session.idle_warning")
    timeout = event_entry(log, "idle", "session.timeout")
    assert opened is not None and timeout["data"]["reason"] == "idle_timeout"
    assert 0 <= warned["data"]["remaining_seconds"] <= IDLE_SECONDS
    assert warned["at"] < timeout["at"] <= opened + (IDLE_SECONDS + 2) * 1000
    # The page pinged every second the whole time, and none of it counted as activity.
    assert result["idle_pings"] >= IDLE_SECONDS - 1
    assert first_at(log, "idle", "state", status="idle") is not None


def test_the_page_notices_the_agents_hangup_within_a_second(result: dict[str, Any]) -> None:
    idle_at = first_at(result["log"], "hung", "state", status="idle")
    assert idle_at is not None
    late_ms = idle_at - result["hangup_sent_at"]
    assert 0 <= late_ms < 1000, f"the page noticed the hangup {late_ms:.0f} ms after it was sent"
