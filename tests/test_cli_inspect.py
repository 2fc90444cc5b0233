"""``voice-server inspect``: the inspection API from a shell, run as a user runs it (a
subprocess) against real server processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.testkit import ChatSession, VoiceServer
from tests.support.procs import ROOT, ServerProcess, free_port, start_server

KEY = "sk_test_cli_inspect_0123456789ab"
SECRET = "cli-inspect-secret-0123456789abcdef"
ADMIN = "cli-admin-" + "k" * 40


def inspect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    return subprocess.run(
        [sys.executable, "-m", "server", "inspect", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
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


@pytest.fixture(scope="module")
def inspected() -> Iterator[ServerProcess]:
    """A production server with inspection on and an admin key."""
    env = {
        "VOICE_TOKEN_SECRET": SECRET,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_INSPECT": "1",
        "VOICE_ADMIN_KEYS": ADMIN,
    }
    proc = start_server(env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def chat(inspected: ServerProcess) -> Iterator[ChatSession]:
    """One finished chat with agent ``cli-agent`` on the inspected server."""
    with VoiceServer.attach(inspected.url, KEY, ADMIN) as server:
        agent = server.agent("cli-agent")
        with agent.chat() as session:
            assert session.send("from the cli test") == "You said: from the cli test"
            call_id = session.call_id
        agent.wait_for("call.ended", call_id=call_id)
        yield session


def admin(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return inspect("--url", server.url, "--admin-key", ADMIN, *args)


def test_tokens_is_a_table_with_the_consumer_and_json_with_every_field(
    inspected: ServerProcess, chat: ChatSession
) -> None:
    with VoiceServer.attach(inspected.url, KEY, ADMIN) as server:
        jti = server.inspector.token(chat.token)["jti"]
    table = admin(inspected, "tokens", "--agent-id", "cli-agent")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["SEQ", "JTI", "CHANNEL", "AGENTS", "STATE", "MINTED", "CONSUMED", "BY", "NODE"]
    (row,) = [r for r in rows if jti in r]
    assert row.split()[2:5] == ["chat", "cli-agent", "consumed"] and chat.call_id in row
    as_json = json.loads(admin(inspected, "--json", "tokens", "--channel", "chat").stdout)
    (item,) = [i for i in as_json["items"] if i["jti"] == jti]
    assert item["consumed_by"] == chat.call_id and item["state"] == "consumed"
    assert chat.token not in table.stdout + json.dumps(as_json)


def test_journal_and_sessions_show_the_chat_and_its_timeline(
    inspected: ServerProcess, chat: ChatSession
) -> None:
    journal = admin(inspected, "journal", "--kind", "session.")
    assert journal.returncode == 0, journal.stderr
    kinds = [line.split()[2] for line in journal.stdout.splitlines()[1:]]
    assert set(kinds) == {"session.start", "session.end"}
    assert f"call_id={chat.call_id}" in journal.stdout and "reason=client_closed" in journal.stdout

    sessions = admin(inspected, "sessions", "--state", "ended")
    (row,) = [r for r in sessions.stdout.splitlines() if chat.call_id in r]
    assert row.split()[1:4] == ["chat", "cli-agent", "ended"]

    one = admin(inspected, "sessions", chat.call_id)
    assert one.returncode == 0, one.stderr
    assert f"call_id:    {chat.call_id}" in one.stdout
    timeline = [line.split()[1:3] for line in one.stdout.split("\n\n", 1)[1].splitlines()[1:]]
    assert ["browser->server", "message"] in timeline and ["agent->server", "bot.reply"] in timeline
    detail = json.loads(admin(inspected, "--json", "sessions", chat.call_id).stdout)
    assert detail["call_id"] == chat.call_id and detail["timeline"]


def test_journal_follow_prints_entries_as_the_server_makes_them(inspected: ServerProcess) -> None:
    command = [sys.executable, "-m", "server", "inspect", "--url", inspected.url, "--admin-key", ADMIN]
    follow = subprocess.Popen(
        [*command, "--json", "journal", "--kind", "mint.refused", "--follow"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with VoiceServer.attach(inspected.url, KEY, ADMIN) as server:
            deadline = time.monotonic() + 20
            agent = "ghost-" + str(time.monotonic_ns())
            assert follow.stdout is not None
            seen: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                assert server.mint(agent).status_code == 404
                line = follow.stdout.readline()
                seen.append(json.loads(line))
                if seen[-1].get("agent_id") == agent:
                    break
            assert seen[-1]["kind"] == "mint.refused" and seen[-1]["code"] == "agent_not_online"
    finally:
        follow.terminate()
        follow.wait(10)
        if follow.stdout is not None:
            follow.stdout.close()


def test_next_to_the_server_its_environment_gives_the_url_and_the_key(
    inspected: ServerProcess, tmp_path: Path
) -> None:
    server_env = {"VOICE_PORT": str(inspected.port), "VOICE_INSPECT": "1", "VOICE_ADMIN_KEYS": ADMIN}
    result = inspect("tokens", env=server_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SEQ  JTI")
    env_file = tmp_path / "voice.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in server_env.items()))
    from_file = inspect("--env-file", str(env_file), "--json", "clock")
    assert from_file.returncode == 0 and json.loads(from_file.stdout)["offset_seconds"] == 0, from_file.stderr
    bad = inspect("tokens", env={"VOICE_PORT": "not-a-port"})
    assert bad.returncode == 2 and "VOICE_PORT" in bad.stderr


@pytest.mark.parametrize(
    ("key", "code"), [(None, "admin_key_required"), ("wrong-" + "x" * 40, "invalid_admin_key")]
)
def test_the_admin_key_is_required_and_checked(inspected: ServerProcess, key: str | None, code: str) -> None:
    result = inspect("--url", inspected.url, *(["--admin-key", key] if key else []), "tokens")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().endswith(f"({code})"), result.stderr


def test_bad_input_is_the_servers_code_not_a_traceback(inspected: ServerProcess) -> None:
    bad_state = admin(inspected, "tokens", "--state", "lost")
    assert bad_state.returncode == 1 and "(invalid_request)" in bad_state.stderr
    unknown = admin(inspected, "sessions", "chat-does-not-exist")
    assert unknown.returncode == 1 and "(session_not_found)" in unknown.stderr
    assert "Traceback" not in bad_state.stderr + unknown.stderr


@pytest.fixture
def scratch() -> Iterator[ServerProcess]:
    """A server of its own for the commands that change state."""
    env = {
        "VOICE_TOKEN_SECRET": SECRET,
        "VOICE_API_KEYS": f"acme:{KEY}",
        "VOICE_INSPECT": "1",
        "VOICE_ADMIN_KEYS": ADMIN,
    }
    proc = start_server(env)
    yield proc
    proc.stop()


def test_clock_shows_advances_and_resets_the_servers_clock(scratch: ServerProcess) -> None:
    assert admin(scratch, "clock").stdout.startswith("offset: 0s  now: ")
    moved = admin(scratch, "clock", "--advance", "90")
    assert moved.returncode == 0 and moved.stdout.startswith("offset: 90s"), moved.stderr
    shown = json.loads(admin(scratch, "--json", "clock").stdout)
    assert shown["offset_seconds"] == 90 and shown["now"] > time.time() + 80
    assert admin(scratch, "clock", "--reset").stdout.startswith("offset: 0s")
    bad = admin(scratch, "clock", "--advance", "-5")
    assert bad.returncode == 1 and "(invalid_request)" in bad.stderr, bad.stderr


def test_reset_empties_the_ledger_and_with_agents_takes_them_offline(scratch: ServerProcess) -> None:
    with VoiceServer.attach(scratch.url, KEY, ADMIN) as server:
        agent = server.agent("reset-agent")
        agent.mint("chat")
        assert len(json.loads(admin(scratch, "--json", "tokens").stdout)["items"]) == 1
        done = admin(scratch, "reset")
        assert done.returncode == 0 and done.stdout.startswith("reset: "), done.stderr
        assert json.loads(admin(scratch, "--json", "tokens").stdout)["items"] == []
        assert server.mint("reset-agent").status_code == 200  # agents stay
        everything = json.loads(admin(scratch, "--json", "reset", "--agents").stdout)
        assert everything["reset"] is True and everything["families"]
        assert server.mint("reset-agent").status_code == 404


def test_fault_add_list_and_clear_make_a_mint_fail_then_not(scratch: ServerProcess) -> None:
    with VoiceServer.attach(scratch.url, KEY, ADMIN) as server:
        server.agent("fault-agent")
        added = admin(
            scratch, "--json", "fault", "add", "mint", "fail",
            "--param", "channel=chat", "--param", "status=503", "--param", "code=injected_outage",
            "--count", "1",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        fault = json.loads(added.stdout)
        assert (fault["target"], fault["kind"], fault["remaining"]) == ("mint", "fail", 1)
        listed = admin(scratch, "fault", "list")
        header, row = listed.stdout.splitlines()
        assert header.split() == ["ID", "TARGET", "KIND", "PARAMS", "LEFT", "EXPIRES", "APPLIED"]
        assert row.split()[:3] == [fault["id"], "mint", "fail"] and '"code":"injected_outage"' in row

        failed = server.mint("fault-agent")
        assert (failed.status_code, failed.json()["code"]) == (503, "injected_outage")
        assert server.mint("fault-agent").status_code == 200  # count 1: spent, gone
        assert (
            admin(scratch, "fault", "list").stdout.strip()
            == "ID  TARGET  KIND  PARAMS  LEFT  EXPIRES  APPLIED\n(none)"
        )
        journal = admin(scratch, "journal", "--kind", "fault.")
        assert f"fault_id={fault['id']}" in journal.stdout

        again = json.loads(
            admin(scratch, "--json", "fault", "add", "store", "slow", "--param", "delay_ms=5").stdout
        )
        assert admin(scratch, "fault", "clear", again["id"]).stdout == "deleted: 1\n"
        unknown = admin(scratch, "fault", "clear", again["id"])
        assert unknown.returncode == 1 and "(fault_not_found)" in unknown.stderr
        admin(scratch, "fault", "add", "store", "slow", "--param", "delay_ms=5")
        assert admin(scratch, "--json", "fault", "clear").stdout.strip() == '{\n  "deleted": 1\n}'
        bad = admin(scratch, "fault", "add", "mint", "explode")
        assert bad.returncode == 1 and "(invalid_request)" in bad.stderr


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
    result = inspect("--url", "http://127.0.0.1:1", "clock", "--advance", "60", "--reset")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
