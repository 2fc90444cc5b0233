"""WhatsAppService on both stores: verification, routing, dedupe, offline queue, conversations, replies.

Agents are registered on a real AgentRegistry with a fake /client connection (the SDK socket is
the boundary); replies go to a real local HTTP server standing in for Meta's Graph API.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from server.core.whatsapp import phone_number_ids, sample_payload, sign
from server.errors import BadRequest, RegistrationError, SignatureError, SignatureRequired, VerifyTokenInvalid
from server.services.agents import AgentRegistry, RegistrySettings
from server.services.calls import CallRouter
from server.services.history import MAX_MESSAGE_CHARS
from server.services.whatsapp import WhatsAppService
from server.settings import Settings
from server.store import Store
from tests.conftest import FakeClock
from tests.support.fake_graph import FakeGraph, fake_graph

SECRET = "meta-app-secret"


class FakeConnection:
    """The agent's /client socket: records what the server writes to it."""

    def __init__(self, org_id: str) -> None:
        self.org_id = org_id
        self.conn_id = "conn_" + secrets.token_hex(4)
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(self, frame: Any) -> None:
        await self.frames.put(dict(frame))

    async def next(self, *names: str, timeout: float = 15.0) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if not names or frame["event"] in names:
                return frame

    def pending(self) -> list[dict[str, Any]]:
        out = []
        while not self.frames.empty():
            out.append(self.frames.get_nowait())
        return out


@dataclass
class Stack:
    service: WhatsAppService
    registry: AgentRegistry
    calls: CallRouter
    clock: FakeClock

    async def agent(
        self, org: str, agent: str, number: str, app_secret: str | None = SECRET, **channel: Any
    ) -> FakeConnection:
        conn = FakeConnection(org)
        await self.registry.register(conn, agent, {}, None)
        frame = {"type": "whatsapp", "ref": number, "accessToken": "EAAG-token", "verifyToken": "vt-" + agent}
        if app_secret:
            frame["appSecret"] = app_secret
        await self.registry.add_channel(conn, agent, {**frame, **channel})
        await self.service.sync()
        return conn

    async def offline(self, conn: FakeConnection) -> None:
        for record in await self.registry.disconnect(conn):
            await self.service.agent_offline(record)
        await self.service.sync()


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with fake_graph() as g:
        yield g


async def open_stack(store: Store, graph: FakeGraph, node_id: str = "n1", **overrides: Any) -> Stack:
    values: dict[str, Any] = {
        "whatsapp_app_secrets": (),
        "whatsapp_require_signature": True,
        "whatsapp_graph_url": graph.url,
        "node_id": node_id,
        **overrides,
    }
    settings = Settings.from_env({"VOICE_TOKEN_SECRET": "t-0123456789abcdef0123456789abcd"}, **values)
    registry = AgentRegistry(store, RegistrySettings(node_id, "http://127.0.0.1:1", 10.0))
    calls = CallRouter()
    clock = FakeClock()
    service = WhatsAppService(settings, store, registry, calls, clock=clock)
    await service.start()
    return Stack(service, registry, calls, clock)


@pytest.fixture
async def stack(store: Store, graph: FakeGraph) -> AsyncIterator[Stack]:
    s = await open_stack(store, graph)
    yield s
    await s.service.aclose()
    await s.registry.stop()


def webhook(
    number: str, sender: str = "15550001", text: str = "hola", message_id: str | None = None
) -> bytes:
    return json.dumps(
        sample_payload(number, sender, text, message_id or "wamid." + secrets.token_hex(6))
    ).encode()


# -- subscription check ----------------------------------------------------------------------------
async def test_challenge_is_echoed_for_a_registered_channels_verify_token(stack: Stack) -> None:
    await stack.agent("org", "bot", "111")
    assert await stack.service.verify_subscription("subscribe", "vt-bot", "1158201444") == "1158201444"


async def test_wrong_verify_token_or_mode_is_refused(stack: Stack) -> None:
    await stack.agent("org", "bot", "111")
    with pytest.raises(VerifyTokenInvalid):
        await stack.service.verify_subscription("subscribe", "vt-other", "1")
    with pytest.raises(VerifyTokenInvalid):
        await stack.service.verify_subscription("unsubscribe", "vt-bot", "1")
    with pytest.raises(BadRequest):
        await stack.service.verify_subscription("subscribe", "vt-bot", "<script>")


async def test_verify_token_of_an_agent_on_another_node_is_found_through_the_store(
    store: Store, graph: FakeGraph, stack: Stack
) -> None:
    await stack.agent("org", "bot", "111")
    other = await open_stack(store, graph, node_id="n2")
    try:
        assert await other.service.verify_subscription("subscribe", "vt-bot", "42") == "42"
        with pytest.raises(VerifyTokenInvalid):
            await other.service.verify_subscription("subscribe", "vt-nobody", "42")
    finally:
        await other.service.aclose()


# -- signatures ------------------------------------------------------------------------------------
async def test_valid_signature_reaches_the_agent_as_session_started_then_message(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    body = webhook("111", text="caf\u00e9 @ 10", message_id="wamid.A")
    assert await stack.service.receive(body, sign(body, SECRET)) == 1
    started = await conn.next()
    assert started["event"] == "whatsapp.session_started"
    assert started["call_id"].startswith("wa-") and started["contact_phone"] == "15550001"
    assert started["contact_name"] == "Test User" and started["agent_id"] == "bot"
    message = await conn.next()
    assert message["event"] == "whatsapp.message" and message["text"] == "café @ 10"
    assert (message["call_id"], message["session_id"]) == (started["call_id"], started["session_id"])
    assert message["from"] == "15550001" and message["message_id"] == "wamid.A"


@pytest.mark.parametrize("header", ["tampered", "wrong-secret", None, "sha1=abcd", "abcdef", "sha256=abc"])
async def test_bad_signatures_are_refused_and_nothing_reaches_the_agent(
    stack: Stack, header: str | None
) -> None:
    conn = await stack.agent("org", "bot", "111")
    body = webhook("111", message_id="wamid.B")
    presented = {"tampered": sign(body + b" ", SECRET), "wrong-secret": sign(body, "nope")}.get(
        header or "", header
    )
    with pytest.raises(SignatureError) as caught:
        await stack.service.receive(body, presented)
    assert caught.value.code == "signature_invalid" and SECRET not in caught.value.detail
    assert conn.pending() == []
    # The refused body left no trace: the genuine delivery of the same message still gets through.
    assert await stack.service.receive(body, sign(body, SECRET)) == 1


async def test_server_wide_secrets_rotate_old_and_new_both_accepted(store: Store, graph: FakeGraph) -> None:
    s = await open_stack(store, graph, whatsapp_app_secrets=("old", "new"))
    try:
        conn = await s.agent("org", "bot", "111", app_secret=None)
        for secret in ("old", "new"):
            body = webhook("111")
            assert await s.service.receive(body, sign(body, secret)) == 1
        body = webhook("111")
        with pytest.raises(SignatureError):
            await s.service.receive(body, sign(body, "retired"))
        assert len([f for f in conn.pending() if f["event"] == "whatsapp.message"]) == 2
    finally:
        await s.service.aclose()


async def test_unsigned_webhooks_are_refused_when_signatures_are_required(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111", app_secret=None)
    with pytest.raises(SignatureRequired) as caught:
        await stack.service.receive(webhook("111"), None)
    assert caught.value.status == 403 and caught.value.code == "signature_required"
    assert conn.pending() == []


async def test_unsigned_webhooks_are_accepted_with_a_warning_and_counted_when_allowed(
    store: Store, graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    s = await open_stack(store, graph, whatsapp_require_signature=False)
    try:
        conn = await s.agent("org", "bot", "111", app_secret=None)
        assert await s.service.receive(webhook("111"), None) == 1
        assert (await conn.next("whatsapp.message"))["text"] == "hola"
        assert s.service.unsigned_accepted == 1
        assert "anyone who finds your endpoint URL can inject fake messages" in caplog.text
    finally:
        await s.service.aclose()


async def test_channel_secret_still_applies_when_unsigned_is_allowed(store: Store, graph: FakeGraph) -> None:
    s = await open_stack(store, graph, whatsapp_require_signature=False)
    try:
        await s.agent("org", "bot", "111")
        with pytest.raises(SignatureError):
            await s.service.receive(webhook("111"), None)
    finally:
        await s.service.aclose()


async def test_a_body_naming_two_numbers_must_verify_against_each_numbers_secret(stack: Stack) -> None:
    await stack.agent("org", "a", "111", app_secret="secret-a")
    await stack.agent("org", "b", "222", app_secret="secret-b")
    a, b = sample_payload("111", "1", "x", "w.1"), sample_payload("222", "2", "y", "w.2")
    body = json.dumps({"object": "whatsapp_business_account", "entry": [*a["entry"], *b["entry"]]}).encode()
    with pytest.raises(SignatureError):
        await stack.service.receive(body, sign(body, "secret-a"))


async def test_bad_json_after_a_valid_signature_is_accepted_with_no_events(stack: Stack) -> None:
    s = stack
    s.service.settings = Settings.from_env(
        {"VOICE_TOKEN_SECRET": "t-0123456789abcdef0123456789abcd"}, whatsapp_app_secrets=("srv",)
    )
    body = b"{not json"
    assert await s.service.receive(body, sign(body, "srv")) == 0
    with pytest.raises(SignatureError):
        await s.service.receive(body, sign(body, "other"))


# -- routing, dedupe, queue ------------------------------------------------------------------------
async def test_redelivered_message_reaches_the_agent_once(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    body = webhook("111", message_id="wamid.same")
    assert await stack.service.receive(body, sign(body, SECRET)) == 1
    assert await stack.service.receive(body, sign(body, SECRET)) == 0
    events = [f["event"] for f in conn.pending()]
    assert events.count("whatsapp.message") == 1 and stack.service.duplicates == 1


async def test_messages_route_to_the_agent_that_owns_the_number(stack: Stack) -> None:
    agents = {
        n: await stack.agent(org, name, n)
        for org, name, n in [("o1", "a", "111"), ("o1", "b", "222"), ("o2", "c", "333")]
    }
    for number in ("222", "333", "111", "222"):
        body = webhook(number, text=f"for {number}")
        await stack.service.receive(body, sign(body, SECRET))
    for number, conn in agents.items():
        texts = [f["text"] for f in conn.pending() if f["event"] == "whatsapp.message"]
        assert texts == [f"for {number}"] * (2 if number == "222" else 1)


async def test_one_session_per_contact_and_statuses_carry_its_call_id(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    for sender in ("1", "2", "1"):
        body = webhook("111", sender=sender)
        await stack.service.receive(body, sign(body, SECRET))
    frames = conn.pending()
    started = [f for f in frames if f["event"] == "whatsapp.session_started"]
    assert [f["contact_phone"] for f in started] == ["1", "2"]
    status = {
        "entry": [
            {
                "changes": [
                    {
                        "value": {
                            "metadata": {"phone_number_id": "111"},
                            "statuses": [{"id": "wamid.out", "status": "delivered", "recipient_id": "2"}],
                        }
                    }
                ]
            }
        ]
    }
    body = json.dumps(status).encode()
    await stack.service.receive(body, sign(body, SECRET))
    frame = await conn.next("whatsapp.status")
    assert frame["call_id"] == started[1]["call_id"] and frame["status"] == "delivered"
    assert frame["recipient"] == frame["recipient_id"] == "2"


async def test_message_for_an_offline_number_is_delivered_when_its_agent_registers(
    store: Store, graph: FakeGraph
) -> None:
    s = await open_stack(store, graph, whatsapp_app_secrets=(SECRET,))
    try:
        first = await s.agent("org", "bot", "111")
        await s.offline(first)
        body = webhook("111", text="while you were out", message_id="wamid.Q")
        assert await s.service.receive(body, sign(body, SECRET)) == 1
        assert await s.service.receive(body, sign(body, SECRET)) == 0  # redelivery is not queued twice
        again = await s.agent("org", "bot", "111")
        assert (await again.next("whatsapp.session_started"))["contact_phone"] == "15550001"
        assert (await again.next("whatsapp.message"))["text"] == "while you were out"
        assert [f for f in again.pending() if f["event"] == "whatsapp.message"] == []
    finally:
        await s.service.aclose()


async def test_offline_number_without_a_known_secret_is_refused_so_meta_retries(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    await stack.offline(conn)
    body = webhook("111")
    with pytest.raises(SignatureRequired):
        await stack.service.receive(body, sign(body, SECRET))


async def test_webhook_on_another_node_is_relayed_to_the_agents_node(
    store: Store, graph: FakeGraph, stack: Stack
) -> None:
    conn = await stack.agent("org", "bot", "111")
    other = await open_stack(store, graph, node_id="n2")
    try:
        body = webhook("111", text="via n2")
        assert await other.service.receive(body, sign(body, SECRET)) == 1
        assert (await conn.next("whatsapp.message"))["text"] == "via n2"
    finally:
        await other.service.aclose()


# -- replies and the conversation's end ------------------------------------------------------------
async def start_conversation(stack: Stack, conn: FakeConnection) -> dict[str, Any]:
    body = webhook("111", sender="15550001")
    await stack.service.receive(body, sign(body, SECRET))
    return await conn.next("whatsapp.message")


async def reply(stack: Stack, call_id: str, text: str, message_id: str = "msg_1") -> None:
    handler = stack.calls.get(call_id, "org")
    assert handler is not None
    await handler.on_agent_command(
        {"event": "bot.reply", "call_id": call_id, "message_id": message_id, "text": text}
    )


async def test_bot_reply_is_sent_through_the_graph_api(stack: Stack, graph: FakeGraph) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    await reply(stack, message["call_id"], "¡Hola! @you")
    response = await conn.next("whatsapp.response", "error")
    assert response["event"] == "whatsapp.response" and response["text"] == "¡Hola! @you"
    assert response["call_id"] == message["call_id"] and response["wa_message_ids"] == ["wamid.fake1"]
    [request] = graph.requests
    assert request.path == "/v21.0/111/messages"
    assert request.headers["authorization"] == "Bearer EAAG-token"
    assert request.body["to"] == "15550001" and request.body["text"]["body"] == "¡Hola! @you"
    assert request.body["messaging_product"] == "whatsapp" and request.body["type"] == "text"


async def test_history_holds_the_conversation_with_each_message_bounded(
    stack: Stack, graph: FakeGraph
) -> None:
    """history.get on a conversation: the contact's text and the sent reply, the reply cut to
    MAX_MESSAGE_CHARS (a conversation lives up to a day; its memory must stay bounded)."""
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    long = "x" * (MAX_MESSAGE_CHARS + 500)
    await reply(stack, message["call_id"], long)
    assert (await conn.next("whatsapp.response", "error"))["event"] == "whatsapp.response"
    handler = stack.calls.get(message["call_id"], "org")
    assert handler is not None
    await handler.on_agent_command(
        {"event": "history.get", "call_id": message["call_id"], "request_id": "r1"}
    )
    data = await conn.next("history.data", "error")
    assert data["request_id"] == "r1" and data["session_id"] == message["call_id"]
    assert [(m["role"], len(m["content"])) for m in data["messages"]] == [
        ("user", len(message["text"])),
        ("assistant", MAX_MESSAGE_CHARS),
    ]


async def test_bot_reply_is_retried_after_a_5xx(stack: Stack, graph: FakeGraph) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    graph.fail_next(503)
    await reply(stack, message["call_id"], "retry me")
    assert (await conn.next("whatsapp.response", "error"))["event"] == "whatsapp.response"
    assert [r.status for r in graph.requests] == [503, 200]


async def test_bot_reply_that_keeps_failing_reaches_the_agent_as_an_error(
    stack: Stack, graph: FakeGraph
) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    graph.fail_next(500, 502, 503)
    await reply(stack, message["call_id"], "doomed", "msg_9")
    error = await conn.next("whatsapp.response", "error")
    assert error["event"] == "error" and error["code"] == "WHATSAPP_SEND_FAILED"
    assert (
        error["call_id"] == message["call_id"] and error["message_id"] == "msg_9" and error["status"] == 503
    )
    assert "EAAG-token" not in json.dumps(error)
    assert len(graph.requests) == 3


async def test_a_4xx_from_graph_is_not_retried(stack: Stack, graph: FakeGraph) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    graph.fail_next(400)
    await reply(stack, message["call_id"], "bad")
    assert (await conn.next("whatsapp.response", "error"))["code"] == "WHATSAPP_SEND_FAILED"
    assert len(graph.requests) == 1


async def test_session_ends_after_the_24h_window_and_a_new_one_starts(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    first = await start_conversation(stack, conn)
    for _ in range(24):  # keep it active (agent replies) so only the window can close it
        stack.clock.advance(3599)
        handler = stack.calls.get(first["call_id"], "org")
        assert handler is not None
        handler.last_activity = stack.clock()  # type: ignore[attr-defined]
        assert await stack.service.conversations.sweep() == 0
    stack.clock.advance(100)
    assert await stack.service.conversations.sweep() == 1
    ended = await conn.next("whatsapp.session_ended")
    assert ended["reason"] == "window_closed" and ended["call_id"] == first["call_id"]
    assert stack.calls.get(first["call_id"], "org") is None
    second = await start_conversation(stack, conn)
    assert second["call_id"] != first["call_id"]


async def test_idle_session_ends_with_idle_timeout(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    stack.clock.advance(3599)
    assert await stack.service.conversations.sweep() == 0
    stack.clock.advance(2)
    assert await stack.service.conversations.sweep() == 1
    ended = await conn.next("whatsapp.session_ended")
    assert (ended["reason"], ended["call_id"], ended["message_count"]) == (
        "idle_timeout",
        message["call_id"],
        1,
    )


async def test_hangup_and_agent_offline_end_the_session(stack: Stack) -> None:
    conn = await stack.agent("org", "bot", "111")
    message = await start_conversation(stack, conn)
    handler = stack.calls.get(message["call_id"], "org")
    assert handler is not None
    await handler.on_agent_command({"event": "call.hangup", "call_id": message["call_id"]})
    assert (await conn.next("whatsapp.session_ended"))["reason"] == "hangup"
    message = await start_conversation(stack, conn)
    await stack.offline(conn)
    assert stack.calls.get(message["call_id"], "org") is None
    assert len(stack.service.conversations) == 0


async def test_a_number_last_owned_by_another_org_cannot_be_taken_while_its_claim_lasts(stack: Stack) -> None:
    """Otherwise anyone could register an offline org's number and receive its webhooks."""
    stack.registry.channel_guards.append(stack.service.guard_channel)  # as Node.open wires it
    owner = await stack.agent("acme", "sales", "10001")
    await stack.offline(owner)
    intruder = FakeConnection("evil")
    await stack.registry.register(intruder, "grabber", {}, None)
    with pytest.raises(RegistrationError, match="another organisation"):
        await stack.registry.add_channel(intruder, "grabber", {"type": "whatsapp", "ref": "10001"})
    same_org = await stack.agent("acme", "support", "10001")  # moving a number inside the org is fine
    assert same_org.org_id == "acme"


def _many_numbers(first: str, count: int) -> bytes:
    payload = sample_payload(first, "15550001", "hola", "wamid." + secrets.token_hex(6))
    entry = payload["entry"][0]
    payload["entry"] = [
        {
            **entry,
            "changes": [
                {
                    **c,
                    "value": {
                        **c["value"],
                        "metadata": {**c["value"]["metadata"], "phone_number_id": str(n)},
                    },
                }
                for c in entry["changes"]
            ],
        }
        for n in [first, *(str(900000 + i) for i in range(count - 1))]
    ]
    return json.dumps(payload).encode()


@pytest.mark.parametrize("header", ["forged", None, "sha1=abcd"])
@pytest.mark.parametrize("server_secret", [False, True])
async def test_a_bad_signature_costs_at_most_one_lookup_however_many_numbers(
    store: Store, graph: FakeGraph, header: str | None, server_secret: bool
) -> None:
    """A body naming 64 numbers cost 64 store lookups before its bad signature was refused."""
    s = await open_stack(store, graph, whatsapp_app_secrets=("server-wide",) if server_secret else ())
    try:
        await s.agent("org", "bot", "111")
        body = _many_numbers("111", 64)
        assert len(phone_number_ids(json.loads(body))) == 64
        looked_up: list[str] = []
        find = s.registry.find_channel

        async def counting(kind: str, ref: str) -> Any:
            looked_up.append(ref)
            return await find(kind, ref)

        s.registry.find_channel = counting  # type: ignore[method-assign]
        presented = sign(body, "not-the-secret") if header == "forged" else header
        with pytest.raises(SignatureError):
            await s.service.receive(body, presented)
        assert len(looked_up) <= (1 if header == "forged" or not server_secret else 0)
    finally:
        await s.service.aclose()
        await s.registry.stop()
