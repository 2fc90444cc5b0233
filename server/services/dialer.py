"""``call.dial``, simulated: this server has no telephony, so an outbound call is played out the
way the SDK sees a real one (pinecall/sdk src/domain/agent.ts ``dial``, which settles on
``call.started`` or ``call.ended``; dispatch/handlers/lifecycle.ts).

1. ``call.dialing {call_id, from, to, direction: "outbound"}`` at once;
2. after :data:`RING_SECONDS`, by the callee's number (:func:`outcome`):
   ``+15005550001`` busy, ``+15005550002`` no-answer, ``+15005550003`` failed — then
   ``call.ended {reason}`` and nothing else (``dial()`` rejects with the reason); any other
   number answers: the call becomes a live session (``call.started {direction: "outbound",
   transport: "phone"}``; commands, limits, watchdogs and ``call.ended`` as for any session);
   ``+15005550004`` answers and hangs up :data:`CALLEE_HANGUP_SECONDS` later (``hangup``).
3. On the call the agent's ``bot.reply`` is "spoken" (``bot.speaking``, then ``bot.finished``
   after a time that grows with its words, then ``message.confirmed``), and the mock callee
   answers each utterance with the mock agent's speech (``You said: ...``, services/mock_agent.py)
   as ``user.message``, up to :data:`MAX_CALLEE_TURNS` times, then hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from server.errors import CapacityExceeded, DialFailed
from server.log import event
from server.services.mock_agent import echo_text
from server.services.sessions import Session, SessionManager, greeting_frame

log = logging.getLogger("voice.dialer")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
RING_SECONDS = 0.2
CALLEE_HANGUP_SECONDS = 0.3
SECONDS_PER_WORD = 0.02  # the simulated speaking time of a reply
MAX_SPEAKING_SECONDS = 2.0
MAX_CALLEE_TURNS = 20
MAX_REPLY_CHARS = 4000
# The callee numbers with a fixed outcome (README, "Wire coverage").
OUTCOMES = {
    "+15005550001": "busy",
    "+15005550002": "no-answer",
    "+15005550003": "failed",
    "+15005550004": "answered-hangup",
}


def outcome(to: str) -> str:
    """``busy``, ``no-answer``, ``failed``, ``answered-hangup`` or ``answered``."""
    return OUTCOMES.get(to, "answered")


class DialedCall(Session):
    transport = "phone"
    call_prefix = "CA"

    def __init__(
        self, org_id: str, agent_id: str, caller: str, callee: str, metadata: Mapping[str, Any]
    ) -> None:
        super().__init__(org_id, agent_id, metadata)
        self.caller, self.callee = caller, callee
        self.greeting: str | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self._worker: asyncio.Task[None] | None = None
        self._callee_turns = 0

    def identity(self) -> dict[str, Any]:
        return {"from": self.caller, "to": self.callee, "direction": "outbound"}

    def started_frame(self) -> dict[str, Any]:
        return {**super().started_frame(), **self.identity()}

    def answered(self, hang_up_after: float | None) -> None:
        self._worker = asyncio.create_task(self._work(hang_up_after), name=f"dialed-{self.call_id}")

    async def handle_command(self, frame: Mapping[str, Any]) -> None:
        if frame.get("event") != "bot.reply":
            await super().handle_command(frame)
            return
        text = frame.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_REPLY_CHARS:
            await self.send_to_agent(
                {
                    "event": "error",
                    "error": f"bot.reply needs 'text' (at most {MAX_REPLY_CHARS} characters)",
                    "code": "BAD_REQUEST",
                }
            )
            return
        try:
            self._inbox.put_nowait(dict(frame))
        except asyncio.QueueFull:
            await self.send_to_agent(
                {"event": "error", "error": "Too many replies waiting", "code": "RATE_LIMITED"}
            )

    async def _work(self, hang_up_after: float | None) -> None:
        if self.greeting:
            await self._inbox.put(greeting_frame(self.greeting))
        if hang_up_after is not None:
            await asyncio.sleep(hang_up_after)
            await self.end("hangup")
            return
        while True:
            await self._say(await self._inbox.get())

    async def _say(self, frame: Mapping[str, Any]) -> None:
        text = str(frame["text"]).strip()
        message_id = frame.get("message_id") if isinstance(frame.get("message_id"), str) else None
        message_id = message_id or "msg_" + secrets.token_hex(8)
        await self.send_to_agent({"event": "bot.speaking", "message_id": message_id, "text": text})
        seconds = min(MAX_SPEAKING_SECONDS, SECONDS_PER_WORD * len(text.split()))
        await asyncio.sleep(seconds)
        await self.send_to_agent(
            {"event": "bot.finished", "message_id": message_id, "duration_ms": int(seconds * 1000)}
        )
        await self.send_to_agent({"event": "message.confirmed", "message_id": message_id, "text": text})
        self.touch()
        if self._callee_turns >= MAX_CALLEE_TURNS:
            await self.end("hangup")
            return
        self._callee_turns += 1
        said = {"event": "user.message", "text": echo_text(text), "message_id": "msg_" + secrets.token_hex(8)}
        await self.send_to_agent(said)

    async def close_transport(self, reason: str) -> None:
        if self._worker is not None and self._worker is not asyncio.current_task():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    def ended_frames(self, reason: str, duration_seconds: float) -> list[dict[str, Any]]:
        return [{**frame, **self.identity()} for frame in super().ended_frames(reason, duration_seconds)]


class Dialer:
    """Places simulated outbound calls for the agents of this node."""

    def __init__(self, sessions: SessionManager, tasks: set[asyncio.Task[None]]) -> None:
        self.sessions = sessions
        self.tasks = tasks  # the node's background tasks: cancelled at shutdown

    async def dial(self, org_id: str, agent_id: str, phones: list[str], frame: Mapping[str, Any]) -> str:
        """Check ``frame`` (``to``, ``from``: one of the agent's ``phones``), answer
        ``call.dialing`` and play the call out in the background; the call id."""
        to, caller = frame.get("to"), frame.get("from")
        if not isinstance(to, str) or not E164.match(to):
            raise DialFailed(f"'to' must be an E.164 number such as +15550100, not {str(to)[:32]!r}")
        if not isinstance(caller, str) or caller not in phones:
            raise DialFailed(
                f"'from' must be one of the agent's phone numbers ({', '.join(phones) or 'none'})"
            )
        metadata = frame.get("metadata")
        call = DialedCall(org_id, agent_id, caller, to, metadata if isinstance(metadata, dict) else {})
        greeting = frame.get("greeting")
        call.greeting = (
            greeting.strip()[:MAX_REPLY_CHARS] if isinstance(greeting, str) and greeting.strip() else None
        )
        reservation = self.sessions.reserve(org_id)  # CapacityExceeded: no room for another call
        await self.sessions.registry.send(
            org_id, agent_id, {"event": "call.dialing", "call_id": call.call_id, **call.identity()}
        )
        task = asyncio.create_task(self._ring(call, reservation), name=f"ring-{call.call_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        event(log, "outbound call dialed (simulated)", call_id=call.call_id, org_id=org_id, agent_id=agent_id)
        return call.call_id

    async def _ring(self, call: DialedCall, reservation: Any) -> None:
        with reservation:
            await asyncio.sleep(RING_SECONDS)
            result = outcome(call.callee)
            if not result.startswith("answered"):
                ended = {
                    "event": "call.ended",
                    "call_id": call.call_id,
                    "reason": result,
                    "duration_seconds": 0,
                    **call.identity(),
                }
                await self.sessions.registry.send(call.org_id, call.agent_id, ended)
                event(log, "outbound call not answered (simulated)", call_id=call.call_id, reason=result)
                return
            try:
                await self.sessions.start(call, reservation)
            except CapacityExceeded:
                ended = {
                    "event": "call.ended",
                    "call_id": call.call_id,
                    "reason": "failed",
                    "duration_seconds": 0,
                    **call.identity(),
                }
                await self.sessions.registry.send(call.org_id, call.agent_id, ended)
                return
        call.answered(CALLEE_HANGUP_SECONDS if result == "answered-hangup" else None)
