"""SIGTERM drains the node: idle agents move at once, live sessions get call.ended, the process exits
in time."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import websockets

from server.services.node import STRAGGLER_SECONDS
from tests.support.procs import start_server
from tests.support.sdk import SdkClient

KEY = "sk_test_drain_0123456789abcdef"


async def test_sigterm_drains_then_exits_within_the_drain_timeout() -> None:
    proc = start_server(
        {
            "VOICE_TOKEN_SECRET": "d-0123456789abcdef0123456789abcd",
            "VOICE_API_KEYS": f"acme:{KEY}",
            "VOICE_DRAIN_SECONDS": "3",
        }
    )
    try:
        busy = await SdkClient.connect(proc.url, KEY)
        await busy.create_agent("busy")
        idle = await SdkClient.connect(proc.url, KEY)
        await idle.create_agent("idle")
        async with httpx.AsyncClient(base_url=proc.url) as http:
            auth = {"Authorization": f"Bearer {KEY}"}
            token = (await http.get("/chat/token", params={"agent_id": "busy"}, headers=auth)).json()["token"]
            spare = (await http.get("/chat/token", params={"agent_id": "busy"}, headers=auth)).json()["token"]
            straggler = (await http.get("/chat/token", params={"agent_id": "busy"}, headers=auth)).json()[
                "token"
            ]
            chat = await websockets.connect(proc.ws_url + f"/chat/ws?token={token}")
            assert '"chat.connected"' in str(await asyncio.wait_for(chat.recv(), 10))
            started = await busy.wait_for("call.started", "llm.chat.started")
            call_id = started["call_id"]

            proc.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # The idle agent's socket closes at once with 1012 (reconnect elsewhere).
            try:
                while True:
                    await asyncio.wait_for(idle.ws.recv(), 5)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1012
            assert time.monotonic() - signalled < 2.5

            # Not ready any more. A session minted before the drain was heard of is still
            # admitted for STRAGGLER_SECONDS (its browser is already on its way); after that,
            # none is.
            assert (await http.get("/readyz")).status_code == 503
            late = await websockets.connect(proc.ws_url + f"/chat/ws?token={straggler}")
            assert '"chat.connected"' in str(await asyncio.wait_for(late.recv(), 10))
            await late.close()
            await asyncio.sleep(max(0.0, STRAGGLER_SECONDS + 0.3 - (time.monotonic() - signalled)))
            refused = await websockets.connect(proc.ws_url + f"/chat/ws?token={spare}")
            try:
                await asyncio.wait_for(refused.recv(), 5)
                raise AssertionError("a new session was admitted while draining")
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1013

            # The live session keeps working during the drain.
            await busy.send(
                {"event": "bot.reply", "call_id": call_id, "message_id": "m1", "text": "still here"}
            )
            while True:
                frame = str(await asyncio.wait_for(chat.recv(), 5))
                if "chat.done" in frame:
                    break

        # At the deadline: call.ended(server_shutdown) to the agent, then its socket closes.
        ended = await busy.wait_for("call.ended", timeout=10)
        while ended["call_id"] != call_id:  # the straggler's own call.ended came first
            ended = await busy.wait_for("call.ended", timeout=10)
        assert ended["reason"] == "server_shutdown"
        # uvicorn re-raises the captured SIGTERM after a clean shutdown, as supervisors expect.
        assert proc.proc.wait(timeout=10) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.log()
        assert time.monotonic() - signalled < 3 + 6
    finally:
        proc.stop()
