"""The pytest plugin as a user meets it: a throwaway project in a temporary directory outside the
package, its tests asking for ``voice_server`` / ``voice_agent``, pytest run in a subprocess with
nothing passed but the project's own options. The plugin comes from the installed package's
``pytest11`` entry point alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

from redis import Redis

from tests.support.procs import ROOT, RedisProcess, free_port, running_server

PROJECT_TESTS = """
import httpx

from server.testkit import SessionRefused

SEEN = {}


def test_a_chat_with_the_agent(voice_agent):
    with voice_agent.chat() as chat:
        assert chat.send("hello") == "You said: hello"
        assert chat.call_id.startswith("chat-")
    assert voice_agent.wait_for("chat.message", text="hello")["call_id"] == chat.call_id
    SEEN["url"] = voice_agent.server.url
    SEEN["agent"] = voice_agent.agent_id


def test_one_server_for_the_run_and_last_tests_agent_is_offline(voice_server):
    assert voice_server.url == SEEN["url"]
    assert voice_server.mint(SEEN["agent"]).status_code == 404


def test_a_custom_reply_and_sealed_metadata(voice_server):
    agent = voice_server.agent("support", greeting=None)
    agent.reply = lambda text, frame: text.upper()
    with agent.chat(metadata={"user": "u-1"}) as chat:
        assert chat.send("shout") == "SHOUT"
    assert agent.wait_for("llm.chat.started")["metadata"]["user"] == "u-1"


def test_a_voice_call_from_the_browser_stand_in(voice_agent):
    with voice_agent.browser() as call:
        assert call.say("good morning") == "You said: good morning"
        assert call.call_id.startswith("wrt_")
        assert call.wait_for("bot.word")["event"] == "bot.word"
    ended = voice_agent.wait_for("call.ended", call_id=call.call_id, timeout=15)
    assert ended["reason"]


def test_allowed_origins_gate_the_public_mint(voice_server):
    voice_server.agent("shop", allowed_origins=["https://*.example.com"])
    assert voice_server.mint("shop", origin="https://a.example.com").status_code == 200
    refused = voice_server.mint("shop", origin="https://example.com.evil.com")
    assert (refused.status_code, refused.json()["code"]) == (403, "origin_not_allowed")


def test_the_journal_says_which_session_consumed_the_token(voice_agent, voice_server):
    inspector = voice_server.inspector
    with voice_agent.chat() as chat:
        chat.send("journal me")
    row = inspector.assert_consumed_once(chat.token, by=chat)
    assert row["agents"] == [voice_agent.agent_id] and row["channel"] == "chat"
    timeline = [(t["direction"], t["event"]) for t in inspector.session(chat.call_id)["timeline"]]
    assert ("browser->server", "message") in timeline and ("agent->server", "bot.reply") in timeline
    unused = voice_agent.mint("chat")
    try:
        inspector.assert_consumed_once(unused, by=chat)
    except AssertionError as exc:
        assert "is issued, not consumed" in str(exc)
    else:
        raise AssertionError("an unused token passed assert_consumed_once")
    assert voice_server.mint("nobody").status_code == 404
    assert inspector.assert_refused("mint.refused", "agent_not_online")["agent_id"] == "nobody"


def test_a_voice_call_is_in_the_ledger_too(voice_agent, voice_server):
    with voice_agent.browser() as call:
        call.say("ledger")
    voice_server.inspector.assert_consumed_once(call.token, by=call)
    (session,) = [s for s in voice_server.inspector.sessions() if s["call_id"] == call.call_id]
    assert session["transport"] == "webrtc"


def test_each_test_starts_from_a_clean_server(voice_server):
    assert voice_server.inspector.tokens() == []
    assert voice_server.inspector.sessions() == []
    assert voice_server.inspector.clock()["offset_seconds"] == 0


def test_the_clock_expires_a_token_without_sleeping(voice_agent, voice_server):
    token = voice_agent.mint("chat")
    voice_server.inspector.advance_clock(120)
    try:
        voice_agent.chat(token=token)
    except SessionRefused as refused:
        assert (refused.status, refused.code) == (1008, "token_expired")
    else:
        raise AssertionError("an expired token opened a chat")
    assert voice_server.inspector.token(token)["state"] == "expired"
    assert voice_server.inspector.assert_refused("consume.refused", "token_expired")


def test_the_clock_is_back_to_real_time_in_the_next_test(voice_server):
    assert voice_server.inspector.clock()["offset_seconds"] == 0


def test_a_spent_token_is_refused_to_the_browser_stand_in(voice_agent):
    token = voice_agent.mint("webrtc")
    with voice_agent.browser(token=token):
        pass
    try:
        voice_agent.browser(token=token)
    except SessionRefused as refused:
        assert (refused.status, refused.code) == (409, "token_spent")
    else:
        raise AssertionError("a spent token opened a second call")


def test_the_secret_key_is_the_servers(voice_server):
    health = httpx.get(voice_server.url + "/readyz")
    assert health.status_code == 200
    assert voice_server.api_key.startswith("sk_test_")
"""


def run_project(tmp_path: Path, tests: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` in a fresh project dir; nothing of this repo on the path but the
    installed package."""
    project = tmp_path / "project"
    project.mkdir(parents=True)
    (project / "test_app.py").write_text(textwrap.dedent(tests))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_") and k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *args],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=110,
    )


def test_the_plugin_is_an_entry_point_of_the_installed_package() -> None:
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("voice_server") == "server.testkit.plugin"


def test_a_separate_project_gets_the_fixtures_with_nothing_passed(tmp_path: Path) -> None:
    assert not tmp_path.resolve().is_relative_to(ROOT)
    result = run_project(tmp_path, PROJECT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 passed" in result.stdout, result.stdout


def test_a_failing_expectation_fails_the_users_test_with_what_was_seen(tmp_path: Path) -> None:
    tests = """
    def test_no_reply(voice_server):
        agent = voice_server.agent("silent")
        agent.reply = lambda text, frame: None
        with agent.chat() as chat:
            chat.send("anyone?", timeout=1)
    """
    result = run_project(tmp_path, tests)
    assert result.returncode == 1, result.stdout
    assert "no chat.done" in result.stdout and "1 failed" in result.stdout, result.stdout


def test_the_store_option_boots_the_server_on_redis(tmp_path: Path, redis_server: RedisProcess) -> None:
    url = redis_server.url.replace("/0", "/9")
    with Redis.from_url(url) as client:
        client.flushdb()
        tests = """
        def test_chat(voice_agent, voice_server):
            assert voice_server.inspector.health()["store"] == "redis"
            with voice_agent.chat() as chat:
                assert chat.send("on redis") == "You said: on redis"
            voice_server.inspector.assert_consumed_once(chat.token, by=chat)

        def test_reset_on_redis_too(voice_server):
            assert voice_server.inspector.tokens() == []
            assert voice_server.inspector.sessions() == []
        """
        result = run_project(tmp_path, tests, "--voice-store-url", url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout, result.stdout
        assert client.dbsize() > 0, "nothing was written to the Redis named by --voice-store-url"


def test_settings_come_from_the_option_not_the_callers_environment(tmp_path: Path) -> None:
    tests = """
    def test_the_setting_and_not_the_stale_environment(voice_agent, voice_server):
        minted = voice_server.mint(voice_agent.agent_id).json()
        assert minted["expires_in"] == 7
        assert minted["server"] == voice_server.url
        assert voice_server.mint("demo").status_code == 404  # not dev mode: no mock agent
    """
    stale = {"VOICE_PUBLIC_URL": "https://nowhere.invalid", "VOICE_DEV": "1", "VOICE_TOKEN_TTL": "3600"}
    result = run_project(tmp_path, tests, "--voice-setting", "VOICE_TOKEN_TTL=7", **stale)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = run_project(tmp_path / "bad", tests, "--voice-setting", "TOKEN_TTL=1")
    assert bad.returncode != 0 and "--voice-setting wants VOICE_NAME=VALUE" in bad.stdout + bad.stderr


def test_the_server_url_option_targets_a_running_server(tmp_path: Path) -> None:
    key = "sk_test_running_0123456789abcdef"
    env = {"VOICE_TOKEN_SECRET": "testkit-running-secret-0123456789", "VOICE_API_KEYS": f"acme:{key}"}
    with running_server(env) as server:
        tests = f"""
        def test_chat(voice_agent):
            assert voice_agent.server.url == "{server.url}" and voice_agent.server.proc is None
            assert voice_agent.org_id == "acme"
            with voice_agent.chat() as chat:
                assert chat.send("there") == "You said: there"
        """
        result = run_project(tmp_path, tests, VOICE_TEST_SERVER_URL=server.url, VOICE_TEST_API_KEY=key)
        assert result.returncode == 0, result.stdout + result.stderr
        # The access log is buffered (VOICE_LOG_FLUSH_SECONDS, 0.2 s): wait for its next write.
        deadline = time.monotonic() + 10
        while "/chat/token" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "/chat/token" in server.log(), "the chat was not minted on the running server"


def test_an_unreachable_server_url_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    tests = """
    def test_x(voice_server):
        pass
    """
    result = run_project(tmp_path, tests, "--voice-server-url", url, "--voice-api-key", "sk_test_x")
    assert result.returncode == 1
    assert f"no voice-server at {url}" in result.stdout, result.stdout
