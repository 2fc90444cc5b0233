"""Issue 18 item 11 (part): ``agent.routeCallers()`` sends ``dev.config {callers}`` (no agent id) and
the SDK re-sends it after every ``agent.created``, on every re-registration (pinecall/sdk
domain/agent.ts ``_flushPending``). On a real server process: however often an agent
re-registers, on a fresh socket or on the same one, none of it draws an error.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.procs import ServerProcess, start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_dev_config_0123456789abcdef"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "dev-config-test-secret-0123456789abcd",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_RATE_LIMIT_KEY": "0",
        }
    )
    yield proc
    proc.stop()


async def register(sdk: SdkClient, name: str, callers: list[str]) -> list[dict[str, Any]]:
    """What the SDK sends on (re-)registration, in its order: agent.create, and once the server
    answers agent.created, each channel.add and then dev.config. Returns everything the server
    sent back, up to the pong that closes the sequence."""
    await sdk.send({"event": "agent.create", "agent_id": name, "voice": "elevenlabs/sarah"})
    created = await sdk.wait_for("agent.created")
    assert created["event"] == "agent.created", created
    for kind in ("webrtc", "chat"):
        await sdk.send({"event": "channel.add", "agent_id": name, "type": kind})
    await sdk.send({"event": "dev.config", "callers": callers})
    await sdk.send({"event": "ping"})
    answers = []
    while (frame := await sdk.recv())["event"] != "pong":
        answers.append(frame)
    return answers


@pytest.mark.parametrize(
    "callers",
    [
        ["+34600123456", "+34612345678"],
        # DEV_CALLERS="+34600123456," split on "," as the SDK's dev-mode guide does: a blank entry
        ["+34600123456", ""],
        [],  # routeCallers([]): route nobody
        ["sip:alice@pbx.example.com;transport=tls"],  # a SIP caller, longer than a phone number
    ],
)
async def test_re_registering_with_route_callers_never_draws_an_error(
    server: ServerProcess, callers: list[str]
) -> None:
    name = "dev-" + uuid.uuid4().hex[:8]
    for _ in range(3):  # the first registration, then two reconnects, each re-sending everything
        sdk = await SdkClient.connect(server.url, KEY)
        answers = await register(sdk, name, callers)
        assert [a["event"] for a in answers] == ["channel.added", "channel.added"], answers
        await sdk.close()
    sdk = await SdkClient.connect(server.url, KEY)
    for _ in range(2):  # and twice on one socket (agent.create again after a config change)
        answers = await register(sdk, name, callers)
        assert not [a for a in answers if a["event"] == "error"], answers
    await sdk.close()


async def test_a_dev_config_that_is_not_a_list_of_callers_is_refused(server: ServerProcess) -> None:
    """Not what routeCallers() sends: a clear error with a stable code, the socket stays open."""
    sdk = await SdkClient.connect(server.url, KEY)
    for bad in ("+34600123456", [42], ["x" * 300], ["+1"] * 101):
        await sdk.send({"event": "dev.config", "callers": bad})
        refused = await sdk.recv()
        assert (refused["event"], refused["code"]) == ("error", "BAD_REQUEST") and "callers" in refused[
            "error"
        ]
    await sdk.send({"event": "ping"})
    assert await sdk.recv() == {"event": "pong"}
    await sdk.close()
