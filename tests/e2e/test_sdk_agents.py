"""``GET /api/sdk/agents``, ``DELETE /api/sdk/agents/{slug}`` and the key-less mint's refusal of
private agents, end to end: real server processes, agents registered over /client.

The single-node cases run once on the embedded store and once on a real redis-server; the
two-node cases run on two processes sharing one redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.procs import RedisProcess, ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY_A = "sk_test_acme_agents_0123456789ab"
KEY_B = "sk_test_globex_agents_0123456789"
KEY_C = "sk_test_initech_agents_012345678"  # only the listing test's agents use this org
SECRET = "e2e-agents-secret-0123456789abcdef"
ORIGINS = ["https://*.example.com"]
WHATSAPP = {
    "accessToken": "EAAG-access-token-xyz",
    "verifyToken": "verify-me-123",
    "appSecret": "app-secret-456",
}


def env(**extra: str) -> dict[str, str]:
    return {
        "VOICE_TOKEN_SECRET": SECRET,
        "VOICE_API_KEYS": f"acme:{KEY_A},globex:{KEY_B},initech:{KEY_C}",
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_RATE_LIMIT_PUBLIC": "0",
        "VOICE_AGENT_HEARTBEAT_TTL": "3",
        **extra,
    }


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    extra = {}
    if request.param == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        extra["VOICE_STORE_URL"] = redis.url.replace("/0", "/6")
    proc = start_server(env(**extra))
    yield proc
    proc.stop()
    log = proc.log()
    for secret in (KEY_A, KEY_B, KEY_C, *WHATSAPP.values()):
        assert secret not in log, "a secret reached the server log"


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def agent_name() -> str:
    return "Agent_" + uuid.uuid4().hex[:8]


def slug(name: str) -> str:
    return name.lower().replace("_", "-")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def online(url: str, name: str, key: str = KEY_A, **config: object) -> SdkClient:
    sdk = await SdkClient.connect(url, key)
    created = await sdk.create_agent(name, **config)
    assert created == {"event": "agent.created", "agent_id": name}
    return sdk


async def add_channel(sdk: SdkClient, name: str, **channel: object) -> None:
    await sdk.send({"event": "channel.add", "agent_id": name, **channel})
    assert (await sdk.wait_for("channel.added"))["event"] == "channel.added"


async def mint_status(http: httpx.AsyncClient, url: str, name: str, key: str = KEY_A) -> tuple[int, str]:
    response = await http.get(f"{url}/webrtc/token", params={"agent_id": name}, headers=bearer(key))
    return response.status_code, response.json().get("code", "")


# -- GET /api/sdk/agents ---------------------------------------------------------------------------
async def test_the_list_names_the_orgs_online_agents_and_no_credentials(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    phone, whatsapp_id = "+1555" + uuid.uuid4().hex[:6], "10" + uuid.uuid4().hex[:8]
    first, second, foreign = agent_name(), agent_name(), agent_name()
    one = await online(server.url, first, key=KEY_C)
    await add_channel(one, first, type="phone", ref=phone)
    await add_channel(one, first, type="webrtc")
    await add_channel(one, first, type="chat")
    two = await online(server.url, second, key=KEY_C, allowed_origins=ORIGINS)
    await add_channel(two, second, type="whatsapp", ref=whatsapp_id, **WHATSAPP)
    other = await online(server.url, foreign, key=KEY_B)

    response = await http.get("/api/sdk/agents", headers=bearer(KEY_C))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "agents": [
            {
                "slug": slug(first),
                "org_id": "initech",
                "phones": [phone],
                "channels": {
                    "phone": {"count": 1, "refs": [phone]},
                    "webrtc": {"count": 1, "refs": []},
                    "chat": {"count": 1, "refs": []},
                },
                "active": True,
            },
            {
                "slug": slug(second),
                "org_id": "initech",
                "phones": [],
                "channels": {"whatsapp": {"count": 1, "refs": [whatsapp_id]}},
                "active": True,
            },
        ][:: 1 if slug(first) < slug(second) else -1],
        "total": 2,
        "phone_map": {phone: slug(first)},
        "dev_overrides": None,
    }
    for secret in WHATSAPP.values():
        assert secret not in response.text
    assert response.headers["cache-control"] == "no-store"

    globex = (await http.get("/api/sdk/agents", headers=bearer(KEY_B))).json()
    assert slug(foreign) in [a["slug"] for a in globex["agents"]]
    assert {a["org_id"] for a in globex["agents"]} == {"globex"}

    await one.close()
    for _ in range(100):  # the socket's close reaches the server a moment later
        listed = (await http.get("/api/sdk/agents", headers=bearer(KEY_C))).json()
        if listed["total"] == 1:
            break
        await asyncio.sleep(0.05)
    assert [a["slug"] for a in listed["agents"]] == [slug(second)] and listed["phone_map"] == {}
    await two.close()
    await other.close()


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/sdk/agents"), ("DELETE", "/api/sdk/agents/anything")]
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("sk_unknown_0000000000000000"),
        bearer("pk_publishable_0000000000000000"),
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "unknown", "publishable", "basic", "empty"],
)
async def test_the_agent_routes_need_a_secret_key(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await http.request(method, path, headers=headers)
    assert response.status_code == 401, response.text
    assert set(response.json()) == {"detail", "code"} and response.json()["code"] == "invalid_api_key"


# -- DELETE /api/sdk/agents/{slug} -------------------------------------------------------------------
async def test_delete_takes_the_agent_offline(server: ServerProcess, http: httpx.AsyncClient) -> None:
    name, kept = agent_name(), agent_name()
    sdk = await online(server.url, name)
    await sdk.create_agent(kept)  # a second agent on the same socket
    assert await mint_status(http, server.url, name) == (200, "")

    response = await http.delete(f"/api/sdk/agents/{name}", headers=bearer(KEY_A))
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "displaced": slug(name), "org_id": "acme"}
    frame = await sdk.wait_for("never")  # the next error frame
    assert (frame["event"], frame["code"], frame["agent_id"]) == ("error", "AGENT_DISPLACED", slug(name))
    assert await mint_status(http, server.url, name) == (404, "agent_not_online")
    listed = (await http.get("/api/sdk/agents", headers=bearer(KEY_A))).json()
    assert slug(name) not in [a["slug"] for a in listed["agents"]]
    assert await mint_status(http, server.url, kept) == (200, ""), "the socket's other agent stays"
    again = await http.delete(f"/api/sdk/agents/{name}", headers=bearer(KEY_A))
    assert again.status_code == 404
    await sdk.close()


async def test_delete_never_touches_another_orgs_agent(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = agent_name()
    sdk = await online(server.url, name, key=KEY_B)
    response = await http.delete(f"/api/sdk/agents/{name}", headers=bearer(KEY_A))
    assert response.status_code == 404
    assert response.json() == {"detail": f"Agent '{name}' is not online", "code": "agent_not_online"}
    assert await mint_status(http, server.url, name, key=KEY_B) == (200, "")
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}, "nothing was sent to the other org's socket"
    await sdk.close()


async def test_delete_of_an_unknown_agent_is_404(http: httpx.AsyncClient) -> None:
    response = await http.delete("/api/sdk/agents/Nobody_Here", headers=bearer(KEY_A))
    assert response.status_code == 404
    assert response.json() == {"detail": "Agent 'Nobody_Here' is not online", "code": "agent_not_online"}


# -- the key-less mint path and private agents -----------------------------------------------------
async def test_a_private_agent_refuses_key_less_mints_with_403(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = agent_name()
    sdk = await online(server.url, name)  # no allowed_origins
    origin = {"Origin": "https://app.example.com"}
    for channel in ("webrtc", "chat", "stream"):
        response = await http.get(f"/{channel}/token", params={"agent_id": name}, headers=origin)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "agent_not_public"
        assert "API key" in response.json()["detail"] and "acme" not in response.text
        # A credential refusal: CORS for matching origins only (CONTRACT §5), and none match.
        assert "access-control-allow-origin" not in response.headers
    preflight = await http.options(
        "/webrtc/token",
        params={"agent_id": name},
        headers={**origin, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 403 and preflight.json()["code"] == "agent_not_public"
    assert "access-control-allow-origin" not in preflight.headers
    assert await mint_status(http, server.url, name) == (200, ""), "the backend path still mints"
    await sdk.close()


async def test_an_offline_agent_is_still_404_on_the_key_less_path(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/webrtc/token", params={"agent_id": agent_name()}, headers={"Origin": "https://app.example.com"}
    )
    assert response.status_code == 404 and response.json()["code"] == "agent_not_online"


async def test_an_agent_id_private_in_two_orgs_is_403(server: ServerProcess, http: httpx.AsyncClient) -> None:
    name = agent_name()
    first = await online(server.url, name, key=KEY_A)
    second = await online(server.url, name, key=KEY_B)
    response = await http.get(
        "/chat/token", params={"agent_id": name}, headers={"Origin": "https://a.example.com"}
    )
    assert response.status_code == 403 and response.json()["code"] == "agent_not_public"
    await first.close()
    await asyncio.sleep(0.3)  # the first org's agent goes offline; the second org's is still there
    response = await http.get(
        "/chat/token", params={"agent_id": name}, headers={"Origin": "https://a.example.com"}
    )
    assert response.status_code == 403 and response.json()["code"] == "agent_not_public"
    await second.close()


async def test_a_public_agent_still_refuses_a_foreign_origin(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = agent_name()
    sdk = await online(server.url, name, allowed_origins=ORIGINS)
    good = await http.get(
        "/webrtc/token", params={"agent_id": name}, headers={"Origin": "https://a.example.com"}
    )
    assert good.status_code == 200
    bad = await http.get("/webrtc/token", params={"agent_id": name}, headers={"Origin": "https://evil.test"})
    assert bad.status_code == 403 and bad.json()["code"] == "origin_not_allowed"
    await sdk.close()


# -- two nodes on one redis-server -----------------------------------------------------------------
@pytest.fixture(scope="module")
def nodes(redis_server: RedisProcess) -> Iterator[list[ServerProcess]]:
    url = redis_server.url.replace("/0", "/7")
    # A long heartbeat TTL: a killed node's records would outlive the test without the release.
    started = [
        start_server(env(VOICE_STORE_URL=url, VOICE_NODE_ID=f"node-{n}", VOICE_AGENT_HEARTBEAT_TTL="60"))
        for n in "ab"
    ]
    yield started
    for node in started:
        node.stop()


async def test_list_and_delete_reach_an_agent_on_another_node(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    name, private = agent_name(), agent_name()
    sdk = await online(a.url, name)
    await sdk.create_agent(private)
    async with httpx.AsyncClient(timeout=10) as http:
        listed = (await http.get(f"{b.url}/api/sdk/agents", headers=bearer(KEY_A))).json()
        assert {slug(name), slug(private)} <= {agent["slug"] for agent in listed["agents"]}
        refused = await http.get(
            f"{b.url}/chat/token", params={"agent_id": private}, headers={"Origin": "https://a.example.com"}
        )
        assert refused.status_code == 403 and refused.json()["code"] == "agent_not_public"

        response = await http.delete(f"{b.url}/api/sdk/agents/{name}", headers=bearer(KEY_A))
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "displaced": slug(name), "org_id": "acme"}
        frame = await sdk.wait_for("never")
        assert (frame["code"], frame["agent_id"]) == ("AGENT_DISPLACED", slug(name))
        for node in (a, b):
            assert await mint_status(http, node.url, name) == (404, "agent_not_online")
        assert await mint_status(http, a.url, private) == (200, "")
    await sdk.close()


async def test_delete_releases_an_agent_whose_node_died(nodes: list[ServerProcess]) -> None:
    """Its node is killed (no goodbye): the record would stay for the 60 s heartbeat TTL; the
    DELETE waits for the owner, then takes the record out itself."""
    _, b = nodes
    doomed = start_server(
        env(
            VOICE_STORE_URL=nodes[0].env["VOICE_STORE_URL"],
            VOICE_NODE_ID="node-doomed",
            VOICE_AGENT_HEARTBEAT_TTL="60",
        )
    )
    name = agent_name()
    sdk = await online(doomed.url, name)
    doomed.kill()
    async with httpx.AsyncClient(timeout=10) as http:
        assert await mint_status(http, b.url, name) == (200, "")  # still recorded as online
        response = await http.delete(f"{b.url}/api/sdk/agents/{name}", headers=bearer(KEY_A))
        assert response.status_code == 200, response.text
        assert await mint_status(http, b.url, name) == (404, "agent_not_online")
    with contextlib.suppress(Exception):  # the socket died with its node
        await sdk.close()
