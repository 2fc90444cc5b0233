"""The built-in mock agent: an in-process stand-in for an SDK agent, for demos and tests.

It goes online through the real registry like any agent (an :class:`AgentConnection` whose
``send`` receives exactly the frames an SDK would get on /client), so minting for it, with a
secret key of its org or from one of its ``allowed_origins``, follows the same rules as for
any agent. It behaves like a minimal SDK app:

* its ``greeting`` is in its registration config, as an SDK agent's is, so the server opens
  every new session with it (services/sessions.py ``greeting_of``);
* ``user.message`` / ``chat.message`` → a ``bot.reply`` of ``You said: <text>``.

Replies go where an SDK's would: to the session's ``on_agent_command``, through
``node.deliver_command``, which relays them when the session lives on another node (CONTRACT §8).
Frames are handled on the agent's own task, as they would be across a socket, so a session
never runs agent code inside its own call stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from server.errors import VoiceError
from server.log import event
from server.services.agents import AgentRegistry

log = logging.getLogger("voice.mock_agent")
QUEUE_SIZE = 1024
# (org_id, call_id, frame) -> whether a live session took the command
CommandSink = Callable[[str, str, Mapping[str, Any]], Awaitable[bool]]
ECHO_ON = frozenset({"user.message", "chat.message"})


def echo_text(text: str) -> str:
    """The mock agent's speech: what it answers a user's ``text`` with (the simulated callee of
    ``call.dial`` answers the agent with it too, services/dialer.py)."""
    return f"You said: {text}"


class MockAgent:
    """One mock agent: ``await MockAgent(...).start()``, then ``await agent.stop()``."""

    def __init__(
        self,
        registry: AgentRegistry,
        deliver: CommandSink,
        *,
        org_id: str,
        agent_id: str,
        origins: tuple[str, ...],
        greeting: str,
    ) -> None:
        self.registry = registry
        self.deliver = deliver
        self.org_id = org_id
        self.agent_id = agent_id
        self.origins = origins
        self.greeting = greeting
        self.conn_id = "mock_" + secrets.token_hex(6)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> MockAgent:
        config = {"mock": True, "greeting": self.greeting}
        await self.registry.register(self, self.agent_id, config, list(self.origins))
        self._task = asyncio.create_task(self._run(), name=f"mock-agent-{self.agent_id}")
        event(
            log, "mock agent online", org_id=self.org_id, agent_id=self.agent_id, origins=list(self.origins)
        )
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.registry.disconnect(self)

    # -- AgentConnection -------------------------------------------------------------------
    async def send(self, frame: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait(dict(frame))
        except asyncio.QueueFull:
            log.warning("mock agent %s is behind; dropped %s", self.agent_id, frame.get("event"))

    # -- behaviour -------------------------------------------------------------------------
    def reply_to(self, frame: Mapping[str, Any]) -> str | None:
        """The text the mock agent answers ``frame`` with, if any."""
        name = frame.get("event")
        if name in ECHO_ON:
            text = frame.get("text")
            return echo_text(text) if isinstance(text, str) and text else None
        return None

    async def _run(self) -> None:
        while True:
            frame = await self._queue.get()
            try:
                await self._handle(frame)
            except Exception:
                log.exception("mock agent failed on %s", frame.get("event"))

    async def _handle(self, frame: Mapping[str, Any]) -> None:
        text = self.reply_to(frame)
        call_id = frame.get("call_id")
        if text is None or not isinstance(call_id, str):
            return
        in_reply_to = frame.get("message_id")
        reply = {
            "event": "bot.reply",
            "call_id": call_id,
            "message_id": "msg_" + secrets.token_hex(8),
            "text": text,
            "in_reply_to": in_reply_to if isinstance(in_reply_to, str) else "",
        }
        with contextlib.suppress(VoiceError):  # the call may have ended before the reply
            await self.deliver(self.org_id, call_id, reply)
