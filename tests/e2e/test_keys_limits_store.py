"""Key management through the CLI, rate limits, start-up checks and a store that goes away.

All against real processes: the server, the ``voice-server`` CLI and redis-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.deploy.deployfiles import compose_environment
from tests.support.procs import ROOT, RedisProcess, ServerProcess, free_port, start_redis, start_server
from tests.support.sdk import SdkClient

BOOT_KEY = "sk_test_boot_0123456789abcdef"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}, **env}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def redis_db(redis_server: RedisProcess) -> str:
    return redis_server.url.replace("/0", "/2")


@pytest.fixture(scope="module")
def server(redis_db: str) -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "keys-test-secret-0123456789abcde",
            "VOICE_STORE_URL": redis_db,
            "VOICE_API_KEYS": f"boot:{BOOT_KEY}",
            "VOICE_RATE_LIMIT_KEY": "5/minute",
            "VOICE_RATE_LIMIT_PUBLIC": "3/minute",
            "VOICE_TRUSTED_PROXIES": "127.0.0.1/32",
        }
    )
    yield proc
    proc.stop()


def name() -> str:
    return "agent-" + uuid.uuid4().hex[:8]


async def test_keys_create_list_revoke(server: ServerProcess, redis_db: str) -> None:
    env = {"VOICE_STORE_URL": redis_db}
    created = cli("keys", "create", "--org", "cli-org", env=env)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sk_live_")
    secret = lines[0]
    listed = cli("keys", "list", env=env)
    assert listed.returncode == 0
    assert secret not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.split("\t")[1] == "cli-org")
    key_id, org, created, last_used, kind, status, label = row.split("\t")
    assert (org, last_used, kind, status, label) == ("cli-org", "-", "secret", "active", "-")
    assert created.endswith("Z")
    assert key_id.startswith("key_")
    as_json = json.loads(cli("keys", "list", "--json", env=env).stdout)
    assert any(k["key_id"] == key_id and k["status"] == "active" for k in as_json)
    assert all("secret" not in k for k in as_json)

    agent = name()
    sdk = await SdkClient.connect(server.url, secret)
    assert sdk.org_id == "cli-org"
    await sdk.create_agent(agent)
    async with httpx.AsyncClient(base_url=server.url) as http:
        auth = {"Authorization": f"Bearer {secret}"}
        assert (await http.get("/chat/token", params={"agent_id": agent}, headers=auth)).status_code == 200
        revoked = cli("keys", "revoke", key_id, env=env)
        assert revoked.returncode == 0 and key_id in revoked.stdout
        refused = await http.get("/chat/token", params={"agent_id": agent}, headers=auth)
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_api_key"
    with pytest.raises(ConnectionError):
        await SdkClient.connect(server.url, secret)
    await sdk.close()
    assert cli("keys", "revoke", "key_missing", env=env).returncode == 1


async def test_keys_create_json_and_publishable_path(server: ServerProcess, redis_db: str) -> None:
    env = {"VOICE_STORE_URL": redis_db}
    made = json.loads(cli("keys", "create", "--org", "boot", "--publishable", "--json", env=env).stdout)
    assert made["secret"].startswith("pk_publishable_") and made["kind"] == "publishable"
    agent = name()
    sdk = await SdkClient.connect(server.url, BOOT_KEY)
    await sdk.create_agent(agent, allowed_origins=["https://shop.example.org"])
    async with httpx.AsyncClient(base_url=server.url) as http:
        pk = {"Authorization": f"Bearer {made['secret']}"}
        ok = await http.get(
            "/webrtc/token", params={"agent_id": agent}, headers={**pk, "Origin": "https://shop.example.org"}
        )
        assert ok.status_code == 200, ok.text
        no_origin = await http.get("/webrtc/token", params={"agent_id": agent}, headers=pk)
        assert no_origin.status_code == 403 and no_origin.json()["code"] == "no_credential"
        wrong = await http.get(
            "/webrtc/token", params={"agent_id": agent}, headers={**pk, "Origin": "https://evil.org"}
        )
        assert wrong.status_code == 403 and wrong.json()["code"] == "origin_not_allowed"
        sealed = await http.get(
            "/webrtc/token",
            params={"agent_id": agent, "metadata": "{}"},
            headers={**pk, "Origin": "https://shop.example.org"},
        )
        assert sealed.status_code == 400  # only a backend seals metadata, even an empty object
    await sdk.close()


def test_keys_commands_refuse_the_embedded_store() -> None:
    result = cli("keys", "list", env={"VOICE_STORE_URL": "memory://"})
    assert result.returncode == 2 and "VOICE_STORE_URL" in result.stderr


async def test_rate_limit_per_key_answers_429_with_retry_after(server: ServerProcess, redis_db: str) -> None:
    secret = cli("keys", "create", "--org", "boot", env={"VOICE_STORE_URL": redis_db}).stdout.strip()
    agent = name()
    sdk = await SdkClient.connect(server.url, BOOT_KEY)
    await sdk.create_agent(agent)
    async with httpx.AsyncClient(base_url=server.url) as http:
        auth = {"Authorization": f"Bearer {secret}"}
        statuses = [
            (await http.get("/chat/token", params={"agent_id": agent}, headers=auth)) for _ in range(7)
        ]
    assert [r.status_code for r in statuses] == [200] * 5 + [429] * 2
    refused = statuses[-1]
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    await sdk.close()


async def test_public_rate_limit_is_per_matched_pattern_and_client_ip(server: ServerProcess) -> None:
    """Issue 15: rotating subdomains under ``*.example.net`` or ports under ``localhost:*`` stays
    in one bucket (the matched pattern + client IP); another client IP has its own. X-Forwarded-For
    counts here because the test's peer (127.0.0.1) is a trusted proxy."""
    agent = name()
    sdk = await SdkClient.connect(server.url, BOOT_KEY)
    await sdk.create_agent(agent, allowed_origins=["https://*.example.net", "http://localhost:*"])
    async with httpx.AsyncClient(base_url=server.url) as http:

        async def mint(origin: str, ip: str) -> int:
            headers = {"Origin": origin, "X-Forwarded-For": ip}
            return (await http.get("/webrtc/token", params={"agent_id": agent}, headers=headers)).status_code

        rotated = [await mint(f"https://s{i}.example.net", "198.51.100.1") for i in range(4)]
        other_ip = await mint("https://a.example.net", "198.51.100.2")
        ports = [await mint(f"http://localhost:{3000 + i}", "198.51.100.3") for i in range(4)]
    assert rotated == [200, 200, 200, 429]
    assert other_ip == 200
    assert ports == [200, 200, 200, 429]
    await sdk.close()


async def test_key_less_probes_for_offline_or_private_agents_are_rate_limited(server: ServerProcess) -> None:
    """A stranger walking agent ids on the key-less path (404 offline, 403 private) is counted per
    client IP against the public limit (3/minute here); another IP has its own bucket, and a
    public agent's own bucket is not spent by the probes."""
    private, public = name(), name()
    sdk = await SdkClient.connect(server.url, BOOT_KEY)
    await sdk.create_agent(private)
    await sdk.create_agent(public, allowed_origins=["https://probe.example.org"])
    async with httpx.AsyncClient(base_url=server.url) as http:

        async def probe(agent: str, ip: str) -> tuple[int, str]:
            headers = {"Origin": "https://probe.example.org", "X-Forwarded-For": ip}
            response = await http.get("/chat/token", params={"agent_id": agent}, headers=headers)
            return response.status_code, response.json().get("code", "")

        walked = [await probe(agent, "198.51.100.9") for agent in (name(), private, name(), private)]
        other_ip = await probe(private, "198.51.100.10")
        still_public = await probe(public, "198.51.100.9")
    assert walked == [
        (404, "agent_not_online"),
        (403, "agent_not_public"),
        (404, "agent_not_online"),
        (429, "rate_limited"),
    ]
    assert other_ip == (403, "agent_not_public")
    assert still_public == (200, "")
    await sdk.close()


def test_outside_dev_mode_a_token_secret_is_required() -> None:
    port = free_port()
    result = cli("serve", "--port", str(port), env={})
    assert result.returncode == 2 and "VOICE_TOKEN_SECRET" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VOICE_TOKEN_TTL", "-5"),
        ("VOICE_STORE_URL", "mysql://x"),
        ("VOICE_RATE_LIMIT_KEY", "lots"),
        ("VOICE_API_KEYS", "no-colon"),
        ("VOICE_PUBLIC_URL", "ftp://x"),
        ("VOICE_TRUSTED_PROXIES", "not-an-ip"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(variable: str, value: str) -> None:
    result = cli("serve", "--dev", "--port", str(free_port()), env={variable: value})
    assert result.returncode == 2 and variable in result.stderr


def test_dev_mode_refuses_a_public_bind() -> None:
    result = cli("serve", "--dev", "--host", "0.0.0.0", "--port", str(free_port()), env={})
    assert result.returncode == 2 and "loopback" in result.stderr


def test_dev_mode_prints_a_working_key_and_curl() -> None:
    proc = start_server({}, args=["--dev"])
    try:
        log = proc.log()
        key_line = next(line for line in log.splitlines() if "API key:" in line)
        key = key_line.split()[-1]
        assert key.startswith("sk_live_") and "curl" in log
        response = httpx.get(
            proc.url + "/chat/token",
            params={"agent_id": "nobody"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 404 and response.json()["code"] == "agent_not_online"
    finally:
        proc.stop()


@pytest.mark.parametrize("log_format", ["", "json"])
def test_dev_mode_logs_text_unless_told_json(log_format: str) -> None:
    """Issue 14: dev mode ignored an explicit VOICE_LOG_FORMAT=json."""
    proc = start_server({"VOICE_LOG_FORMAT": log_format}, args=["--dev"])
    try:
        httpx.get(proc.url + "/healthz")
        lines = [line for line in proc.log().splitlines() if "Application startup complete" in line]
    finally:
        proc.stop()
    assert len(lines) == 1
    if log_format == "json":
        assert json.loads(lines[0])["msg"] == "Application startup complete."
    else:
        assert not lines[0].startswith("{")


async def test_the_store_fails_closed_and_recovers() -> None:
    """Redis down: no token is issued (503 store_unavailable); Redis back: minting works again."""
    redis = start_redis()
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd",
            "VOICE_STORE_URL": redis.url,
            "VOICE_API_KEYS": f"boot:{BOOT_KEY}",
        }
    )
    try:
        agent = name()
        sdk = await SdkClient.connect(proc.url, BOOT_KEY)
        await sdk.create_agent(agent)
        auth = {"Authorization": f"Bearer {BOOT_KEY}"}
        async with httpx.AsyncClient(base_url=proc.url, timeout=15) as http:
            assert (
                await http.get("/chat/token", params={"agent_id": agent}, headers=auth)
            ).status_code == 200
            redis.stop()
            down = await http.get("/chat/token", params={"agent_id": agent}, headers=auth)
            assert down.status_code == 503 and down.json()["code"] == "store_unavailable"
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            redis = start_redis(port=redis.port, workdir=redis.workdir)
            # A fresh, empty Redis: the agent's heartbeat claims its registration again within
            # a few seconds, and VOICE_API_KEYS keys are configuration, so minting recovers
            # without a restart.
            for _ in range(150):
                again = await http.get("/chat/token", params={"agent_id": agent}, headers=auth)
                if again.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert again.status_code == 200, again.text
            assert (await http.get("/readyz")).status_code == 200
        await sdk.close()
    finally:
        proc.stop()
        redis.stop()


async def test_a_forged_forwarded_for_line_does_not_escape_the_limit(server: ServerProcess) -> None:
    """Two X-Forwarded-For lines (client's forged one, then the proxy's): the proxy's hop counts."""
    agent = name()
    sdk = await SdkClient.connect(server.url, BOOT_KEY)
    await sdk.create_agent(agent, allowed_origins=["https://forged.example.net"])
    statuses = []
    async with httpx.AsyncClient(base_url=server.url) as http:
        for i in range(4):
            headers = [
                ("Origin", "https://forged.example.net"),
                ("X-Forwarded-For", f"10.9.9.{i}"),  # forged by the client, different each time
                ("X-Forwarded-For", "198.51.100.77"),  # appended by the trusted proxy
            ]
            response = await http.get("/webrtc/token", params={"agent_id": agent}, headers=headers)
            statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    await sdk.close()


# A paused Redis (SIGSTOP: connections open, no replies) must cost each request the store's
# 2 s bound, not socket timeout x retries per store call (9-15 s before the fix; /readyz 6 s).
STALL_BOUND = 2.0
STALL_MARGIN = 2.5  # process and scheduling noise on 2 shared cores; the old path took >= 6 s


async def test_a_stalled_store_answers_503_within_its_bound() -> None:
    redis = start_redis()
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd",
            "VOICE_STORE_URL": redis.url,
            "VOICE_API_KEYS": f"boot:{BOOT_KEY}",
            "VOICE_CACHE_SECONDS": "0",  # every request reads the key and the agent from Redis
        }
    )
    try:
        stored = cli("keys", "create", "--org", "boot", env={"VOICE_STORE_URL": redis.url}).stdout.strip()
        agent = name()
        sdk = await SdkClient.connect(proc.url, BOOT_KEY)
        await sdk.create_agent(agent, allowed_origins=["https://app.example"])
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
            minted = await http.get(
                "/chat/token", params={"agent_id": agent}, headers={"Authorization": f"Bearer {stored}"}
            )
            assert minted.status_code == 200, minted.text
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                requests = {
                    "readyz": http.get("/readyz"),
                    "stored key mint": http.get(
                        "/chat/token",
                        params={"agent_id": agent},
                        headers={"Authorization": f"Bearer {stored}"},
                    ),
                    "public mint": http.get(
                        "/chat/token", params={"agent_id": agent}, headers={"Origin": "https://app.example"}
                    ),
                    "agent info": http.get(
                        f"/api/sdk/agent-info/{agent}", headers={"Authorization": f"Bearer {stored}"}
                    ),
                }
                for what, request in requests.items():
                    started = time.monotonic()
                    answer = await request
                    took = time.monotonic() - started
                    assert answer.status_code == 503, (what, answer.status_code, answer.text)
                    assert answer.json()["code"] == "store_unavailable", (what, answer.text)
                    assert took < STALL_BOUND + STALL_MARGIN, f"{what} took {took:.1f} s"
                started = time.monotonic()
                with pytest.raises(
                    (websockets.exceptions.ConnectionClosed, websockets.exceptions.InvalidStatus)
                ):
                    async with websockets.connect(
                        proc.ws_url + "/chat/ws?token=" + minted.json()["token"]
                    ) as ws:
                        while True:  # a refusal: its error frame, then the close
                            await ws.recv()
                assert time.monotonic() - started < STALL_BOUND + STALL_MARGIN
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            for _ in range(100):  # and the node recovers by itself
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await http.get("/readyz")).status_code == 200
        await sdk.close()
    finally:
        proc.stop()
        redis.stop()


@pytest.mark.parametrize("where", ["compose", "systemd"])
def test_key_commands_work_with_the_environment_the_server_runs_with(
    redis_db: str, where: str, tmp_path: Path
) -> None:
    """Issue 14: with compose's VOICE_HOST=0.0.0.0 the key commands exited 2 (they read settings
    as in dev mode), and the unit file's `env $(cat env | xargs)` broke on its comment lines."""
    args: list[str] = []
    if where == "compose":
        env = compose_environment(
            "node-a", {"VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd" * 32}
        ) | {"VOICE_STORE_URL": redis_db}
    else:
        example = (ROOT / "deploy" / "systemd" / "env.example").read_text()
        assert "redis://127.0.0.1:6379/0" in example and "\n#" in example  # comments, empty secret
        env_file = tmp_path / "env"
        env_file.write_text(example.replace("redis://127.0.0.1:6379/0", redis_db))
        env, args = {}, ["--env-file", str(env_file)]
    created = cli("keys", "create", "--org", f"ops-{where}", "--label", "from ops", *args, env=env)
    assert created.returncode == 0, created.stderr
    listed = cli("keys", "list", *args, env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(f"ops-{where}" in line for line in listed.stdout.splitlines())


def test_a_missing_env_file_is_one_clear_line(tmp_path: Path) -> None:
    result = cli("keys", "list", "--env-file", str(tmp_path / "nope"), env={})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"voice-server: configuration error: --env-file {tmp_path / 'nope'}: No such file or directory"
    ]


def test_a_port_in_use_is_one_line_before_any_banner() -> None:
    """Issue 14 item 4: the banner printed a fresh key and curls, then the bind failed."""
    first = start_server({}, args=["--dev"])
    try:
        result = cli("serve", "--dev", "--port", str(first.port), env={})
    finally:
        first.stop()
    assert result.returncode == 1
    assert "API key" not in result.stdout + result.stderr and "curl" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"voice-server: cannot listen on 127.0.0.1:{first.port}: Address already in use"
    ]


def test_dev_mode_with_an_unreachable_store_is_one_line_naming_the_url_without_its_password() -> None:
    port = free_port()
    url = f"redis://:hunter2-password@127.0.0.1:{port}/0"
    result = cli("serve", "--dev", "--port", str(free_port()), env={"VOICE_STORE_URL": url})
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert f"redis://:***@127.0.0.1:{port}/0" in lines[0] and "hunter2" not in lines[0]


def test_a_production_node_reports_a_store_outage_once_and_its_end_once() -> None:
    """It used to log a traceback every second while the store was down."""
    port = free_port()
    server = start_server(
        {"VOICE_TOKEN_SECRET": "s" * 32, "VOICE_STORE_URL": f"redis://:pw-secret@127.0.0.1:{port}/0"},
        ready_path="/healthz",
    )
    redis = None
    try:
        time.sleep(4)  # several beats and resubscriptions
        down = server.log()
        redis = start_redis(port=port, extra=["--requirepass", "pw-secret"])
        deadline = time.monotonic() + 15
        while "reachable again" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = server.log()
    finally:
        server.stop()
        if redis is not None:
            redis.stop()
    warnings = [json.loads(line) for line in down.splitlines() if line.startswith("{")]
    unreachable = [w for w in warnings if "is unreachable" in w["msg"]]
    assert len(unreachable) == 1, unreachable
    assert f"127.0.0.1:{port}" in unreachable[0]["msg"] and "pw-secret" not in down
    assert "Traceback" not in down and not [w for w in warnings if w["level"] == "error"]
    assert [line for line in log.splitlines() if "reachable again" in line]


async def test_keys_rotate_keeps_the_old_key_for_its_grace_then_closes_its_sockets(
    server: ServerProcess, redis_db: str
) -> None:
    """Issue 14 item 6: rotate prints the new secret; the old key mints and holds its /client
    socket until the grace ends, then both stop, on the running server."""
    env = {"VOICE_STORE_URL": redis_db}
    old_secret = cli("keys", "create", "--org", "rot-org", "--label", "backend", env=env).stdout.strip()
    old_id = next(
        line.split("\t")[0]
        for line in cli("keys", "list", env=env).stdout.splitlines()
        if line.split("\t")[1] == "rot-org"
    )
    sdk = await SdkClient.connect(server.url, old_secret)
    agent = name()
    await sdk.create_agent(agent)
    rotated = cli("keys", "rotate", old_id, "--grace", "3", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    assert new_secret.startswith("sk_live_") and new_secret != old_secret
    assert old_id in rotated.stderr and "works until" in rotated.stderr
    rows = {
        line.split("\t")[0]: line.split("\t") for line in cli("keys", "list", env=env).stdout.splitlines()
    }
    assert rows[old_id][5].startswith("expires@") and rows[old_id][6] == "backend"
    (new_row,) = [r for r in rows.values() if r[1] == "rot-org" and r[0] != old_id]
    assert new_row[5] == "active" and new_row[6] == "backend"
    async with httpx.AsyncClient(base_url=server.url) as http:
        for secret in (old_secret, new_secret):  # both work during the grace
            auth = {"Authorization": f"Bearer {secret}"}
            assert (
                await http.get("/chat/token", params={"agent_id": agent}, headers=auth)
            ).status_code == 200
        # After the grace the old key's socket is closed by the server and its mints fail.
        frame = await sdk.wait_for("never", timeout=10)
        assert frame["event"] == "error" and frame["code"] == "INVALID_API_KEY"
        refused = await http.get(
            "/chat/token", params={"agent_id": agent}, headers={"Authorization": f"Bearer {old_secret}"}
        )
        assert refused.status_code == 401
    await sdk.close()
    assert cli("keys", "rotate", "key_missing", env=env).returncode == 1


def test_keys_list_says_when_there_are_none(redis_server: RedisProcess) -> None:
    empty = redis_server.url.replace("/0", "/5")
    result = cli("keys", "list", env={"VOICE_STORE_URL": empty})
    assert result.returncode == 0 and result.stdout == ""
    assert "no keys" in result.stderr


def test_whatsapp_send_with_a_missing_file_is_one_line(tmp_path: Path) -> None:
    result = cli(
        "whatsapp", "send", "--url", "http://127.0.0.1:9", "--file", str(tmp_path / "nope.json"), env={}
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"voice-server: cannot read --file {tmp_path / 'nope.json'}: No such file or directory"
    ]
