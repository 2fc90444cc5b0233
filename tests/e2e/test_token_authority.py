"""The token authority end to end: the real server process, /client frame by frame, mint over HTTP.

Runs once on the embedded store and once on a real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from server.core.tokens import Channel, TokenCodec
from server.core.whatsapp import sign
from tests.support.procs import RedisProcess, ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY_A = "sk_test_acme_0123456789abcdef"
KEY_B = "sk_test_globex_0123456789abcdef"
SECRET = "e2e-token-secret-0123456789abcdef0123"
ORIGINS = ["https://*.example.com", "https://demo.mysite.com", "http://localhost:*"]
HOSTILE = [
    "https://example.com",
    "https://example.com.evil.net",
    "https://evilexample.com",
    "http://app.example.com",
    "https://demo.mysite.com.evil.com",
    "https://demo.mysite.com:8443",
    "http://localhost.evil.com",
    "http://127.0.0.1:3000",
    "null",
    "https://app.example.com/",
    "https://app.example.com@evil.com",
    "https://evil.com#.example.com",
    "https://app.example.com.",
    "",
]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    env = {
        "VOICE_TOKEN_SECRET": SECRET,
        "VOICE_API_KEYS": f"acme:{KEY_A},globex:{KEY_B}",
        "VOICE_RATE_LIMIT_KEY": "0",
        "VOICE_RATE_LIMIT_PUBLIC": "0",
        "VOICE_AGENT_HEARTBEAT_TTL": "3",
    }
    if request.param == "redis":
        redis: RedisProcess = request.getfixturevalue("redis_server")
        env["VOICE_STORE_URL"] = redis.url.replace("/0", "/1")
    proc = start_server(env)
    yield proc
    proc.stop()
    log = proc.log()
    for secret in (KEY_A, KEY_B, SECRET):
        assert secret not in log, "a secret reached the server log"
    assert "token=wrtc_" not in log and "token=cht_" not in log


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


async def online(server: ServerProcess, name: str, key: str = KEY_A, **config: object) -> SdkClient:
    sdk = await SdkClient.connect(server.url, key)
    created = await sdk.create_agent(name, **config)
    assert created == {"event": "agent.created", "agent_id": name}
    return sdk


# -- /client handshake --------------------------------------------------------------------------
async def test_connect_answers_connected_with_the_org(server: ServerProcess) -> None:
    sdk = await SdkClient.connect(server.url, KEY_A)
    assert sdk.hello["org_id"] == "acme"
    assert sdk.hello["connection_id"] and sdk.hello["protocol_version"] == 1
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}
    await sdk.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"event": "connect", "api_key": "sk_wrong_key_000000000000"}, "INVALID_API_KEY"),
        ({"event": "connect"}, "INVALID_API_KEY"),
        ({"event": "agent.create", "agent_id": "x"}, "BAD_REQUEST"),
        ("not json", "BAD_REQUEST"),
    ],
)
async def test_a_bad_handshake_gets_an_error_frame_then_close(
    server: ServerProcess, first: object, code: str
) -> None:
    async with websockets.connect(server.ws_url + "/client") as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame["event"] == "error" and frame["code"] == code
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_publishable_key_cannot_open_client(server: ServerProcess) -> None:
    with pytest.raises(ConnectionError):
        await SdkClient.connect(server.url, "pk_publishable_not_a_backend_key")


async def test_bad_frames_get_error_frames_and_the_connection_lives(server: ServerProcess) -> None:
    sdk = await SdkClient.connect(server.url, KEY_A)
    await sdk.ws.send("{not json")
    assert (await sdk.recv())["code"] == "BAD_REQUEST"
    await sdk.ws.send(b"\x00\x01binary")
    assert (await sdk.recv())["code"] == "BAD_REQUEST"
    await sdk.send({"event": "no.such.event"})
    assert (await sdk.recv())["code"] == "BAD_REQUEST"
    await sdk.send({"event": "agent.create", "agent_id": "!!!"})
    assert (await sdk.recv())["code"] == "BAD_REQUEST"
    await sdk.send(
        {"event": "agent.create", "agent_id": agent_name(), "allowed_origins": ["https://a*.x.com"]}
    )
    bad = await sdk.recv()
    assert bad["event"] == "error" and bad["code"] == "REGISTRATION_ERROR" and "a*.x.com" in bad["error"]
    await sdk.send({"event": "bot.reply", "call_id": "wrt_nope", "text": "hi"})
    assert (await sdk.recv())["code"] == "CALL_NOT_FOUND"
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}
    await sdk.close()


async def test_an_oversized_frame_closes_cleanly(server: ServerProcess) -> None:
    """Over the WebSocket layer's limit (twice VOICE_CLIENT_FRAME_BYTES): closed 1009. Frames
    under it are answered with an error frame (tests/e2e/test_sdk_sessions.py)."""
    sdk = await SdkClient.connect(server.url, KEY_A)
    await sdk.ws.send(json.dumps({"event": "ping", "pad": "x" * (2 * 1024 * 1024 + 1)}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(sdk.ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_channels_are_added_removed_and_configured(server: ServerProcess) -> None:
    name = agent_name()
    sdk = await online(server, name)
    wa = {
        "type": "whatsapp",
        "ref": "10" + uuid.uuid4().hex[:8],
        "accessToken": "t",
        "verifyToken": "v",
        "appSecret": "s",
    }
    await sdk.send({"event": "channel.add", "agent_id": name, **wa})
    assert await sdk.recv() == {
        "event": "channel.added",
        "agent_id": name,
        "type": "whatsapp",
        "ref": wa["ref"],
    }
    await sdk.send({"event": "channel.add", "agent_id": name, **wa})  # the SDK re-sends after reconnects
    assert (await sdk.recv())["event"] == "channel.added"
    await sdk.send({"event": "channel.add", "agent_id": name, "type": "webrtc"})
    assert (await sdk.recv())["event"] == "channel.added"
    await sdk.send({"event": "channel.remove", "agent_id": name, "type": "webrtc", "ref": "webrtc"})
    assert (await sdk.recv())["event"] == "channel.removed"
    await sdk.send({"event": "channel.add", "agent_id": name, "type": "carrier-pigeon"})
    assert (await sdk.recv())["code"] == "REGISTRATION_ERROR"
    await sdk.send({"event": "agent.configure", "agent_id": name, "voice": "v2"})
    assert await sdk.recv() == {"event": "agent.configured", "agent_id": name}
    other = await online(server, agent_name())
    await other.send({"event": "channel.add", "agent_id": other.hello["org_id"] and "x", "type": "chat"})
    assert (await other.recv())["code"] == "REGISTRATION_ERROR"  # not an agent of this connection
    await sdk.close()
    await other.close()


async def test_agent_in_use_for_a_second_connection(server: ServerProcess) -> None:
    """A second live connection is refused, then takes over by itself once the holder goes."""
    name = agent_name()
    first = await online(server, name)
    second = await SdkClient.connect(server.url, KEY_A)
    await second.send({"event": "agent.create", "agent_id": slug(name)})
    refused = await second.recv()
    assert refused["event"] == "error" and refused["code"] == "AGENT_IN_USE"
    await first.close()
    # No re-send: the pending registration is retried on the node's heartbeat (1 s here).
    taken = await second.wait_for("agent.created", timeout=5)
    assert taken == {"event": "agent.created", "agent_id": slug(name)}
    await second.close()


async def test_the_same_agent_id_in_two_orgs(server: ServerProcess, http: httpx.AsyncClient) -> None:
    name = agent_name()
    a = await online(server, name)
    b = await online(server, name, key=KEY_B)
    ok_a = await http.get("/chat/token", params={"agent_id": name}, headers=bearer(KEY_A))
    ok_b = await http.get("/chat/token", params={"agent_id": name}, headers=bearer(KEY_B))
    assert ok_a.status_code == ok_b.status_code == 200
    codec = TokenCodec([SECRET])
    assert codec.decode(ok_a.json()["token"], Channel.CHAT, 0 + _now()).org_id == "acme"
    assert codec.decode(ok_b.json()["token"], Channel.CHAT, _now()).org_id == "globex"
    await a.close()
    await b.close()


async def test_a_public_agent_id_belongs_to_one_org(server: ServerProcess) -> None:
    name = agent_name()
    a = await online(server, name, allowed_origins=ORIGINS)
    b = await SdkClient.connect(server.url, KEY_B)
    await b.send({"event": "agent.create", "agent_id": name, "allowed_origins": ORIGINS})
    assert (await b.recv())["code"] == "REGISTRATION_ERROR"
    await a.close()
    await b.close()


# -- mint with a secret key ---------------------------------------------------------------------
@pytest.mark.parametrize(("channel", "prefix"), [("webrtc", "wrtc_"), ("chat", "cht_"), ("stream", "stm_")])
async def test_mint_with_a_key_on_every_channel(
    server: ServerProcess, http: httpx.AsyncClient, channel: str, prefix: str
) -> None:
    name = agent_name()
    sdk = await online(server, name)
    metadata = {"user_id": "u-1", "plan": "pro"}
    response = await http.get(
        f"/{channel}/token",
        params={"agent_id": name.upper(), "metadata": json.dumps(metadata)},
        headers=bearer(KEY_A),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "server", "expires_in", "expiresIn"}
    assert body["token"].startswith(prefix) and body["expires_in"] == body["expiresIn"] == 60
    assert body["server"] == server.url
    assert response.headers["cache-control"] == "no-store"
    claims = TokenCodec([SECRET]).decode(body["token"], Channel(channel), _now())
    assert (claims.org_id, claims.agents, dict(claims.metadata)) == ("acme", (slug(name),), metadata)
    await sdk.close()


async def test_two_kilobytes_of_emoji_metadata_make_a_token_a_session_accepts(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """509 emoji (2,044 bytes, within the 2 KB bound) used to make a ~8,400-character token that
    every session refused as malformed."""
    name = agent_name()
    sdk = await online(server, name)
    metadata = {"x": "\U0001f600" * 509}
    response = await http.get(
        "/chat/token",
        params={"agent_id": name, "metadata": json.dumps(metadata, ensure_ascii=False)},
        headers=bearer(KEY_A),
    )
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert len(token) <= 8192
    async with websockets.connect(server.ws_url + f"/chat/ws?token={token}") as chat:
        assert json.loads(await asyncio.wait_for(chat.recv(), 10))["event"] == "chat.connected"
    await sdk.close()


async def test_a_stream_token_names_several_agents(server: ServerProcess, http: httpx.AsyncClient) -> None:
    one, two = agent_name(), agent_name()
    a, b = await online(server, one), await online(server, two)
    response = await http.get("/stream/token", params={"agent_id": f"{one},{two}"}, headers=bearer(KEY_A))
    assert response.status_code == 200, response.text
    claims = TokenCodec([SECRET]).decode(response.json()["token"], Channel.STREAM, _now())
    assert claims.agents == (slug(one), slug(two))
    comma = await http.get("/chat/token", params={"agent_id": f"{one},{two}"}, headers=bearer(KEY_A))
    assert comma.status_code == 400 and comma.json()["code"] == "bad_request"
    await a.close()
    await b.close()


async def test_agents_go_offline_when_their_socket_closes(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = agent_name()
    sdk = await online(server, name)
    assert (
        await http.get("/chat/token", params={"agent_id": name}, headers=bearer(KEY_A))
    ).status_code == 200
    await sdk.close()
    for _ in range(100):
        response = await http.get("/chat/token", params={"agent_id": name}, headers=bearer(KEY_A))
        if response.status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert response.json() == {"detail": f"Agent '{name}' is not online", "code": "agent_not_online"}


@pytest.mark.parametrize(
    ("params", "headers", "status", "code"),
    [
        ({}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": ""}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": "@@@"}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": "{agent}", "metadata": "[1,2]"}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": "{agent}", "metadata": "{bad json"}, bearer(KEY_A), 400, "bad_request"),
        (
            {"agent_id": "{agent}", "metadata": json.dumps({"x": "y" * 3000})},
            bearer(KEY_A),
            400,
            "bad_request",
        ),
        ({"agent_id": "{agent}", "scope": "root"}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": "{agent}", "call_id": "a b"}, bearer(KEY_A), 400, "bad_request"),
        ({"agent_id": "{agent}"}, bearer("sk_unknown_0000000000000000"), 401, "invalid_api_key"),
        ({"agent_id": "{agent}"}, {"Authorization": "Basic abc"}, 401, "invalid_api_key"),
        ({"agent_id": "{agent}"}, {"Authorization": "Bearer"}, 401, "invalid_api_key"),
        ({"agent_id": "{agent}"}, bearer(KEY_B), 404, "agent_not_online"),
        ({"agent_id": "{agent}"}, {}, 403, "no_credential"),
    ],
)
async def test_mint_refusals(
    server: ServerProcess,
    http: httpx.AsyncClient,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    name = agent_name()
    sdk = await online(server, name)
    query = {k: v.replace("{agent}", name) for k, v in params.items()}
    response = await http.get("/webrtc/token", params=query, headers=headers)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert set(response.json()) == {"detail", "code"}
    await sdk.close()


# -- the public path ------------------------------------------------------------------------------
async def test_public_mint_for_a_matching_origin(server: ServerProcess, http: httpx.AsyncClient) -> None:
    name = agent_name()
    sdk = await online(server, name, allowed_origins=ORIGINS)
    for origin in (
        "https://app.example.com",
        "https://a.b.example.com",
        "https://demo.mysite.com",
        "http://localhost:5173",
    ):
        response = await http.get("/webrtc/token", params={"agent_id": name}, headers={"Origin": origin})
        assert response.status_code == 200, (origin, response.text)
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["vary"] == "Origin"
    await sdk.close()


@pytest.mark.parametrize("origin", HOSTILE)
async def test_public_mint_refuses_hostile_origins(
    server: ServerProcess, http: httpx.AsyncClient, origin: str
) -> None:
    name = agent_name()
    sdk = await online(server, name, allowed_origins=ORIGINS)
    response = await http.get("/chat/token", params={"agent_id": name}, headers={"Origin": origin})
    assert response.status_code == 403 and response.json()["code"] == "origin_not_allowed", response.text
    assert "token" not in response.json()
    assert "access-control-allow-origin" not in response.headers  # matching origins only (CONTRACT §5)
    assert response.headers["vary"] == "Origin"
    await sdk.close()


async def test_public_mint_needs_allowed_origins_on_the_agent(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """Online without allowed_origins: 403 agent_not_public (CONTRACT §1), not 404 as if offline."""
    name = agent_name()
    sdk = await online(server, name)
    response = await http.get(
        "/webrtc/token", params={"agent_id": name}, headers={"Origin": "https://app.example.com"}
    )
    assert response.status_code == 403 and response.json()["code"] == "agent_not_public", response.text
    await sdk.close()


async def test_public_mint_refuses_metadata_and_missing_origin(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    name = agent_name()
    sdk = await online(server, name, allowed_origins=ORIGINS)
    sealed = await http.get(
        "/webrtc/token",
        params={"agent_id": name, "metadata": '{"admin": true}'},
        headers={"Origin": "https://a.example.com"},
    )
    assert sealed.status_code == 400 and sealed.json()["code"] == "bad_request"
    bare = await http.get("/webrtc/token", params={"agent_id": name})
    assert bare.status_code == 403 and bare.json()["code"] == "no_credential"
    await sdk.close()


async def test_a_publishable_key_pins_the_org_but_not_the_origin(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """Publishable keys are created through the store (here: the in-process check of a bad one)."""
    name = agent_name()
    sdk = await online(server, name, allowed_origins=ORIGINS)
    unknown = await http.get(
        "/webrtc/token",
        params={"agent_id": name},
        headers={"Origin": "https://a.example.com", **bearer("pk_publishable_unknown")},
    )
    assert unknown.status_code == 401 and unknown.json()["code"] == "invalid_api_key"
    await sdk.close()


async def test_preflight_is_judged_against_the_agent(server: ServerProcess, http: httpx.AsyncClient) -> None:
    name = agent_name()
    sdk = await online(server, name, allowed_origins=ORIGINS)
    good = await http.options(
        "/webrtc/token",
        params={"agent_id": name},
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert good.status_code == 204
    assert good.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "GET" in good.headers["access-control-allow-methods"]
    assert "authorization" in good.headers["access-control-allow-headers"].lower()
    bad = await http.options(
        "/webrtc/token",
        params={"agent_id": name},
        headers={"Origin": "https://example.com.evil.net", "Access-Control-Request-Method": "GET"},
    )
    assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
    await sdk.close()


async def test_a_double_slash_path_still_mints(server: ServerProcess, http: httpx.AsyncClient) -> None:
    """The SDK builds ``{apiUrl}/webrtc/token``; an apiUrl with a trailing slash gives ``//``."""
    name = agent_name()
    sdk = await online(server, name)
    response = await http.get(server.url + "//webrtc/token", params={"agent_id": name}, headers=bearer(KEY_A))
    assert response.status_code == 200
    await sdk.close()


async def test_unknown_routes_use_the_error_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/nope")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    wrong = await http.post("/webrtc/token")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/nope", "/chat/wss", "/client/x", "/ws/streams"])
async def test_an_unknown_websocket_path_gets_the_same_404_body(server: ServerProcess, path: str) -> None:
    """Issue 14: a WebSocket handshake on an unknown path answered a bare 403."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.ws_url + path):
            pass
    response = refused.value.response
    assert response.status_code == 404
    assert json.loads(bytes(response.body or b""))["code"] == "not_found"


def _now() -> float:
    import time

    return time.time()


async def test_channels_are_configured_and_removed_by_ref_alone_as_the_sdk_sends_them(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    """Issue 17 item 1: agent.configureChannel(ref, cfg) and agent.removeChannel(ref) send the
    ref alone (pinecall/sdk src/domain/agent.ts); both were refused with REGISTRATION_ERROR,
    which makes the SDK mark the agent's registration failed."""
    name = agent_name()
    sdk = await online(server, name)
    number = "10" + uuid.uuid4().hex[:8]
    wa = {"type": "whatsapp", "ref": number, "accessToken": "t", "verifyToken": "v", "appSecret": "s3cret"}
    await sdk.send({"event": "channel.add", "agent_id": name, **wa})
    assert (await sdk.recv())["event"] == "channel.added"
    await sdk.send({"event": "channel.add", "agent_id": name, "type": "webrtc"})  # no ref, as the SDK
    assert (await sdk.recv())["event"] == "channel.added"

    await sdk.send({"event": "channel.configure", "agent_id": name, "ref": "webrtc", "voice": "mock"})
    assert await sdk.recv() == {
        "event": "channel.configured",
        "agent_id": name,
        "type": "webrtc",
        "ref": "webrtc",
    }
    await sdk.send({"event": "channel.configure", "agent_id": name, "ref": number, "language": "es"})
    assert await sdk.recv() == {
        "event": "channel.configured",
        "agent_id": name,
        "type": "whatsapp",
        "ref": number,
    }
    # The merge kept the channel's credentials: a webhook signed with its app secret still verifies.
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"value": {"metadata": {"phone_number_id": number}}}]}],
        }
    ).encode()
    signed = await http.post(
        "/whatsapp/webhook", content=body, headers={"X-Hub-Signature-256": sign(body, "s3cret")}
    )
    assert signed.status_code == 200, signed.text

    await sdk.send({"event": "channel.configure", "agent_id": name, "ref": "nope", "voice": "x"})
    unknown = await sdk.recv()
    assert (unknown["event"], unknown["code"], unknown["agent_id"]) == ("error", "CHANNEL_NOT_FOUND", name)
    assert "'nope'" in unknown["error"]
    await sdk.send({"event": "channel.remove", "agent_id": name, "ref": "webrtc"})
    assert await sdk.recv() == {
        "event": "channel.removed",
        "agent_id": name,
        "type": "webrtc",
        "ref": "webrtc",
    }
    await sdk.send({"event": "channel.remove", "agent_id": name, "ref": number})
    assert await sdk.recv() == {
        "event": "channel.removed",
        "agent_id": name,
        "type": "whatsapp",
        "ref": number,
    }
    await sdk.send({"event": "channel.remove", "agent_id": name, "ref": number})  # gone already
    assert (await sdk.recv())["code"] == "CHANNEL_NOT_FOUND"
    await sdk.close()


async def test_dev_config_is_accepted_quietly_as_route_callers_sends_it(server: ServerProcess) -> None:
    """Issue 17 item 3 / 18 item 11: agent.routeCallers() sends dev.config {callers} with no agent
    id, again on every re-registration; each drew an `unknown event` error."""
    name = agent_name()
    sdk = await online(server, name)
    await sdk.send({"event": "dev.config", "callers": ["+15550100", "+15550101"]})
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}  # nothing came back for dev.config
    await sdk.send({"event": "dev.config", "callers": "not-a-list"})
    refused = await sdk.recv()
    assert refused["event"] == "error" and refused["code"] == "BAD_REQUEST" and "callers" in refused["error"]
    await sdk.close()
