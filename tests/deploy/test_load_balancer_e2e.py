"""deploy/haproxy.cfg for real: HAProxy on loopback in front of two real voice-server processes on
one real redis-server. Only the addresses change (bind port, the two server addresses); every
other line of the shipped config is what runs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.deployfiles import HAPROXY, TEST_TOKEN_SECRET
from tests.support.procs import ServerProcess, free_port, start_server, wait_for_port
from tests.support.sdk import SdkClient

pytestmark = pytest.mark.slow
KEY = "sk_test_acme_lb_0123456789abcdef"
ORIGIN = "https://app.example.com"
DEADLINE_SECONDS = 20.0


@contextlib.contextmanager
def _haproxy(tmp_path: Path, nodes: list[ServerProcess]) -> Iterator[str]:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy); the config's structure is checked")
    port = free_port()
    config = HAPROXY.read_text().replace("bind :8080", f"bind 127.0.0.1:{port}")
    for name, node in zip(("node-a", "node-b"), nodes, strict=True):
        assert f"{name}:8080" in config
        config = config.replace(f"{name}:8080", f"127.0.0.1:{node.port}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess]]]:
    nodes: list[ServerProcess] = []
    try:
        for name in ("node-a", "node-b"):
            env = {
                "VOICE_TOKEN_SECRET": TEST_TOKEN_SECRET,
                "VOICE_STORE_URL": redis_url,
                "VOICE_API_KEYS": f"acme:{KEY}",
                "VOICE_NODE_ID": name,
                "VOICE_TRUSTED_PROXIES": "127.0.0.1/32",
                "VOICE_RATE_LIMIT_PUBLIC": "1/minute",
            }
            nodes.append(start_server(env, ready_path="/readyz"))
        with _haproxy(tmp_path, nodes) as url:
            yield url, nodes
    finally:
        for node in nodes:
            node.stop()


async def _until_both_nodes_are_up(http: httpx.AsyncClient, nodes: list[ServerProcess]) -> None:
    """HAProxy's first health checks pass (rise 2, inter 2s): /readyz answers from both nodes."""
    seen: set[str] = set()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(seen) < len(nodes) and time.monotonic() < deadline:
        response = await http.get("/readyz")
        if response.status_code == 200:
            seen.add(response.json()["node_id"])
    assert seen == {"node-a", "node-b"}, f"the LB reached only {seen}"


async def test_sdk_socket_and_mint_through_the_load_balancer_point_at_the_owner_node(
    stack: tuple[str, list[ServerProcess]],
) -> None:
    """/client upgrades through HAProxy; a mint through it returns the owner node's own URL."""
    lb, nodes = stack
    async with httpx.AsyncClient(base_url=lb, timeout=10) as http:
        await _until_both_nodes_are_up(http, nodes)
        sdk = await SdkClient.connect(lb, KEY)
        try:
            assert sdk.hello["org_id"] == "acme"
            assert (await sdk.create_agent("lb-bot"))["event"] == "agent.created"
            owners = set()
            for _ in range(6):  # round robin: the mints land on both nodes
                response = await http.get(
                    "/chat/token", params={"agent_id": "lb-bot"}, headers={"Authorization": f"Bearer {KEY}"}
                )
                assert response.status_code == 200, response.text
                owners.add(response.json()["server"])
            assert len(owners) == 1 and owners <= {node.url for node in nodes}
        finally:
            await sdk.close()


async def test_a_client_cannot_choose_its_address_through_the_load_balancer(
    stack: tuple[str, list[ServerProcess]],
) -> None:
    """HAProxy replaces X-Forwarded-For: two public mints claiming different addresses share the
    one real peer's rate-limit bucket (1/minute), so the second is refused."""
    lb, nodes = stack
    async with httpx.AsyncClient(base_url=lb, timeout=10) as http:
        await _until_both_nodes_are_up(http, nodes)
        sdk = await SdkClient.connect(lb, KEY)
        try:
            assert (await sdk.create_agent("lb-public", allowed_origins=[ORIGIN]))["event"] == "agent.created"
            statuses = [
                (
                    await http.get(
                        "/webrtc/token",
                        params={"agent_id": "lb-public"},
                        headers={"Origin": ORIGIN, "X-Forwarded-For": spoofed},
                    )
                ).status_code
                for spoofed in ("198.51.100.1", "198.51.100.2")
            ]
            assert statuses == [200, 429]
        finally:
            await sdk.close()


async def test_the_load_balancer_stops_routing_to_a_node_that_is_gone(
    stack: tuple[str, list[ServerProcess]],
) -> None:
    lb, nodes = stack
    async with httpx.AsyncClient(base_url=lb, timeout=10) as http:
        await _until_both_nodes_are_up(http, nodes)
        nodes[0].stop()
        for _ in range(20):  # retry-on conn-failure + the /readyz checks: no request fails
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            assert response.json()["node_id"] == "node-b"
