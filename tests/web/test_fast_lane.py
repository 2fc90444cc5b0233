"""The mint routes' fast lane: same answers as the router would give, same query parsing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.services.node import Node
from server.settings import Settings
from server.web.app import create_app
from server.web.tokens import parse_query

QUERY_CHARS = st.sampled_from([*"ab=&%+;,. _-~é\x00", "%20", "%2", "%C3%A9", "%ZZ", "=="])


@given(st.lists(QUERY_CHARS, max_size=40).map("".join))
def test_parse_query_is_parse_qsl_with_the_last_value_winning(query: str) -> None:
    assert parse_query(query) == dict(parse_qsl(query, keep_blank_values=True))


def test_parse_query_plain_pairs() -> None:
    assert parse_query("") == {}
    assert parse_query("agent_id=bench&scope=&flag") == {"agent_id": "bench", "scope": "", "flag": ""}
    assert parse_query("agent_id=a&agent_id=b") == {"agent_id": "b"}


KEY = "sk_test_fastlane_0123456789abcdef"


@pytest.fixture
async def app_client() -> AsyncIterator[tuple[httpx.AsyncClient, Node]]:
    """The real app in-process (memory store), its lifespan run, and agent "bench" online."""
    settings = Settings.from_env(
        {
            "VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_MOCK_AGENT": "off",
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        node: Node = app.state.node
        await node.registry.register(_Sdk(), "bench", {"allowedOrigins": ["https://app.example.com"]}, None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, node


class _Sdk:
    """A stand-in /client connection for the registry."""

    conn_id = "conn-1"
    org_id = "acme"

    async def send(self, frame: object) -> None:
        return None


async def test_the_fast_lane_and_the_router_answer_alike(app_client: tuple[httpx.AsyncClient, Node]) -> None:
    client, _ = app_client
    bearer = {"Authorization": f"Bearer {KEY}"}
    fast = await client.get("/webrtc/token?agent_id=bench", headers=bearer)
    routed = await client.get("http://test//webrtc/token?agent_id=bench", headers=bearer)  # the router
    for answer in (fast, routed):
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"token", "server", "expires_in", "expiresIn"}
        assert answer.headers["vary"] == "Origin" and answer.headers["cache-control"] == "no-store"
    missing = await client.get("/webrtc/token", headers=bearer)
    assert missing.status_code == 400 and missing.json()["code"] == "bad_request"
    wrong = await client.post("/webrtc/token?agent_id=bench", headers=bearer)
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    head = await client.head("/webrtc/token?agent_id=bench", headers=bearer)
    assert head.status_code == 200 and head.content == b""


async def test_an_unexpected_error_in_the_fast_lane_is_a_500_in_the_one_error_shape(
    app_client: tuple[httpx.AsyncClient, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, node = app_client

    async def broken(**_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(node.authority, "mint", broken)
    answer = await client.get("/chat/token?agent_id=bench", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "Internal server error", "code": "internal_error"}


async def test_an_unexpected_error_in_a_chat_session_closes_it_with_1011(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.websockets import WebSocket

    from server.realtime import chat_ws

    async def broken(websocket: WebSocket) -> None:
        await websocket.accept()
        raise RuntimeError("a bug")

    monkeypatch.setattr(chat_ws, "chat_endpoint", broken)
    app = create_app(
        Settings.from_env(
            {"VOICE_TOKEN_SECRET": "s-0123456789abcdef0123456789abcd", "VOICE_MOCK_AGENT": "off"}
        )
    )
    sent: list[dict[str, object]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, object]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/chat/ws", "query_string": b"token=x", "headers": []}
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert (sent[1]["code"], sent[1]["reason"]) == (1011, "internal_error")
