"""WhatsApp conversations on the agent's node, and replies through Meta's Graph API.

A conversation is keyed by (org, agent, phone number id, contact). Its first message sends
``whatsapp.session_started`` to the agent, every message ``whatsapp.message``; the agent's
``bot.reply {call_id "wa-..."}`` reaches the session through ``node.calls`` and goes out as
``POST {graph}/{phone_number_id}/messages``. A conversation ends (``whatsapp.session_ended``)
when Meta's 24 h customer-service window since the contact's last message closes, after the
idle timeout, on ``call.hangup``, or when the agent goes offline.

These are not :class:`server.services.sessions.Session` objects on purpose: a WhatsApp
conversation holds no media and lasts up to a day, so it must not count against the per-node
voice/chat session limits, and the SDK treats WhatsApp events as agent-level (no ``call.started``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from server.core.whatsapp import (
    InboundMessage,
    StatusUpdate,
    retryable,
    session_end_reason,
    split_text,
    text_message,
)
from server.core.wire import error_frame
from server.errors import AgentNotOnline
from server.log import event
from server.services.agents import AgentRegistry
from server.services.calls import CallRouter

if TYPE_CHECKING:
    from server.services.journal import Journal

log = logging.getLogger("voice.whatsapp")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
SEND_ATTEMPTS = 3
MAX_PENDING_REPLIES = 32  # per conversation; beyond that the agent is told to slow down
MAX_CONVERSATIONS = 50_000  # per node; the least recently active one is ended to make room
MAX_REPLY_CHARS = 64 * 1024
Key = tuple[str, str, str, str]  # org, agent, phone number id, contact


class GraphError(Exception):
    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class GraphClient:
    """``POST {base}/{phone_number_id}/messages`` with bounded retries on 5xx, 429 and timeouts."""

    def __init__(
        self, base_url: str, http: httpx.AsyncClient, backoff: float = 0.25, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = http
        self._backoff = backoff
        self._sleep = sleep
        # Injected faults (/_voice/faults): waits, or names a status to fail the attempt with.
        self.before_send: Callable[[], Awaitable[int | None]] | None = None

    async def send_text(self, phone_number_id: str, access_token: str, to: str, body: str) -> str:
        """Send one text message; the WhatsApp message id, or GraphError after the last attempt."""
        url = f"{self._base}/{quote(phone_number_id, safe='')}/messages"
        headers = {"Authorization": f"Bearer {access_token}"}
        last = GraphError("not attempted")
        for attempt in range(SEND_ATTEMPTS):
            if attempt:
                await self._sleep(self._backoff * 2 ** (attempt - 1))
            if self.before_send is not None:
                injected = await self.before_send()
                if injected is not None:
                    last = GraphError(f"Graph API answered {injected} (fault injected)", injected)
                    if not retryable(injected):
                        break
                    continue
            try:
                response = await self._http.post(url, json=text_message(to, body), headers=headers)
            except httpx.TimeoutException:
                last = GraphError("the Graph API did not answer in time")
                continue
            except httpx.HTTPError as exc:
                last = GraphError(f"could not reach the Graph API ({type(exc).__name__})")
                continue
            if response.is_success:
                return _message_id(response)
            last = GraphError(_graph_detail(response), response.status_code)
            if not retryable(response.status_code):
                break
        raise last


def _message_id(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, LookupError, TypeError, AttributeError):
        return str(response.json()["messages"][0]["id"])
    return ""


def _graph_detail(response: httpx.Response) -> str:
    """Meta's error message (it never echoes the access token), bounded for the frame."""
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = str(response.json()["error"]["message"])
    return f"Graph API answered {response.status_code}" + (f": {message[:300]}" if message else "")


class WhatsAppSession:
    """One conversation; ``node.calls`` routes the agent's commands for ``call_id`` here."""

    transport = "whatsapp"

    def __init__(self, owner: Conversations, key: Key, contact_name: str, now: float) -> None:
        self.org_id, self.agent_id, self.phone_number_id, self.contact = key
        self.key = key
        self.contact_name = contact_name
        self.call_id = "wa-" + secrets.token_hex(8)
        self.session_id = "wa_sess_" + secrets.token_hex(8)
        self.started_at = self.last_contact_at = self.last_activity = now
        self.message_count = 0
        self.pending = 0
        self.lock = asyncio.Lock()  # replies go out in the order the agent sent them
        self._owner = owner

    async def on_agent_command(self, frame: Mapping[str, Any]) -> None:
        await self._owner.command(self, frame)


class Conversations:
    def __init__(
        self,
        registry: AgentRegistry,
        calls: CallRouter,
        graph: GraphClient,
        idle_seconds: float,
        clock: Clock = time.time,
    ) -> None:
        self.registry = registry
        self.calls = calls
        self.graph = graph
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._live: dict[Key, WhatsAppSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.journal: Journal | None = None  # set by the node when inspection is on

    def __len__(self) -> int:
        return len(self._live)

    def live(self) -> list[WhatsAppSession]:
        return list(self._live.values())

    async def _send(self, session: WhatsAppSession, frame: Mapping[str, Any]) -> bool:
        if self.journal is not None:
            self.journal.frame(session.call_id, "server->agent", frame)
        return await self.registry.send(
            session.org_id,
            session.agent_id,
            {**frame, "call_id": session.call_id, "session_id": session.session_id},
        )

    # -- inbound ---------------------------------------------------------------------------
    async def message(self, org_id: str, agent_id: str, msg: InboundMessage) -> bool:
        """Hand ``msg`` to the agent if its socket is on this node; False otherwise (queue it)."""
        if self.registry.local_connection(org_id, agent_id) is None:
            return False
        now = self._clock()
        key = (org_id, agent_id, msg.phone_number_id, msg.contact)
        session = self._live.get(key)
        if session is not None:
            reason = session_end_reason(
                now, session.last_contact_at, session.last_activity, self.idle_seconds
            )
            if reason is not None:
                await self.end(session, reason)
                session = None
        if session is None:
            session = await self._open(key, msg.contact_name, now)
        session.last_contact_at = session.last_activity = now
        session.message_count += 1
        session.contact_name = msg.contact_name or session.contact_name
        frame: dict[str, Any] = {
            "event": "whatsapp.message",
            "from": msg.contact,
            "contact_name": session.contact_name,
            "text": msg.text,
            "message_id": msg.message_id,
            "type": msg.type,
            "timestamp": msg.timestamp,
            "phone_number_id": msg.phone_number_id,
        }
        if msg.type != "text":
            frame["data"] = dict(msg.data)
        return await self._send(session, frame)

    async def _open(self, key: Key, contact_name: str, now: float) -> WhatsAppSession:
        if len(self._live) >= MAX_CONVERSATIONS:
            await self.end(min(self._live.values(), key=lambda s: s.last_activity), "evicted")
        session = WhatsAppSession(self, key, contact_name, now)
        self._live[key] = session
        self.calls.add(session)
        if self.journal is not None:
            self.journal.note(
                "session.start", call_id=session.call_id, transport="whatsapp", agent_id=key[1], org=key[0]
            )
        await self._send(
            session,
            {
                "event": "whatsapp.session_started",
                "contact_phone": session.contact,
                "contact_name": contact_name,
                "phone_number_id": session.phone_number_id,
            },
        )
        event(log, "whatsapp session started", call_id=session.call_id, org_id=key[0], agent_id=key[1])
        return session

    async def status(self, org_id: str, agent_id: str, update: StatusUpdate) -> bool:
        """A delivery status of a message the agent sent; carries the conversation's call id if live."""
        session = self._live.get((org_id, agent_id, update.phone_number_id, update.recipient_id))
        frame: dict[str, Any] = {
            "event": "whatsapp.status",
            "message_id": update.message_id,
            "status": update.status,
            "recipient_id": update.recipient_id,
            "timestamp": update.timestamp,
            "phone_number_id": update.phone_number_id,
        }
        if update.errors:
            frame["errors"] = list(update.errors)
        if session is not None:
            return await self._send(session, frame)
        return await self.registry.send(org_id, agent_id, frame)

    # -- the agent's commands --------------------------------------------------------------
    async def command(self, session: WhatsAppSession, frame: Mapping[str, Any]) -> None:
        if self.journal is not None:
            self.journal.frame(session.call_id, "agent->server", frame)
        name = frame.get("event")
        if name == "call.hangup":
            await self.end(session, "hangup")
            return
        if name != "bot.reply":
            await self._error(
                session, f"unsupported command {name!r} on a WhatsApp session", "UNSUPPORTED_COMMAND"
            )
            return
        text, message_id = frame.get("text"), frame.get("message_id")
        message_id = message_id if isinstance(message_id, str) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_REPLY_CHARS:
            await self._error(
                session,
                f"bot.reply needs text (1 to {MAX_REPLY_CHARS} characters)",
                "BAD_REQUEST",
                message_id,
            )
            return
        if session.pending >= MAX_PENDING_REPLIES:
            await self._error(session, "too many replies waiting to be sent", "WHATSAPP_BUSY", message_id)
            return
        session.pending += 1
        session.last_activity = self._clock()
        task = asyncio.create_task(self._reply(session, text, message_id), name=f"wa-reply-{session.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, session: WhatsAppSession, text: str, message_id: str | None) -> None:
        try:
            async with session.lock:
                token = await self._access_token(session)
                if token is None:
                    await self._error(
                        session,
                        "this WhatsApp channel has no accessToken",
                        "WHATSAPP_NOT_CONFIGURED",
                        message_id,
                    )
                    return
                sent: list[str] = []
                for part in split_text(text):
                    sent.append(
                        await self.graph.send_text(session.phone_number_id, token, session.contact, part)
                    )
            await self._send(
                session,
                {
                    "event": "whatsapp.response",
                    "text": text,
                    "message_id": message_id,
                    "wa_message_ids": sent,
                },
            )
        except GraphError as exc:
            event(log, "whatsapp send failed", logging.WARNING, call_id=session.call_id, status=exc.status)
            await self._error(session, exc.detail, "WHATSAPP_SEND_FAILED", message_id, status=exc.status)
        except Exception:
            log.exception("whatsapp reply on %s failed", session.call_id)
            await self._error(session, "internal error sending the reply", "WHATSAPP_SEND_FAILED", message_id)
        finally:
            session.pending -= 1

    async def _access_token(self, session: WhatsAppSession) -> str | None:
        """The channel's current token (read at send time: ``channel.configure`` may rotate it)."""
        try:
            record = await self.registry.find(session.org_id, session.agent_id)
        except AgentNotOnline:
            return None
        token = record.channels.get(f"whatsapp:{session.phone_number_id}", {}).get("accessToken")
        return token if isinstance(token, str) and token else None

    async def _error(
        self, session: WhatsAppSession, detail: str, code: str, message_id: str | None = None, **extra: Any
    ) -> None:
        await self.registry.send(
            session.org_id,
            session.agent_id,
            error_frame(detail, code, call_id=session.call_id, message_id=message_id, **extra),
        )

    # -- ending ----------------------------------------------------------------------------
    async def end(self, session: WhatsAppSession, reason: str) -> None:
        if self._live.get(session.key) is not session:
            return
        del self._live[session.key]
        self.calls.remove(session)
        if self.journal is not None:
            self.journal.note("session.end", call_id=session.call_id, reason=reason)
        now = self._clock()
        with contextlib.suppress(Exception):
            await self._send(
                session,
                {
                    "event": "whatsapp.session_ended",
                    "reason": reason,
                    "contact_phone": session.contact,
                    "contact_name": session.contact_name,
                    "phone_number_id": session.phone_number_id,
                    "started_at": session.started_at,
                    "ended_at": now,
                    "duration": round(now - session.started_at, 3),
                    "message_count": session.message_count,
                },
            )
        event(log, "whatsapp session ended", call_id=session.call_id, reason=reason)

    async def sweep(self) -> int:
        """End every conversation whose window closed or that sat idle; how many ended."""
        now = self._clock()
        ended = 0
        for session in self.live():
            reason = session_end_reason(
                now, session.last_contact_at, session.last_activity, self.idle_seconds
            )
            if reason is not None:
                await self.end(session, reason)
                ended += 1
        return ended

    async def agent_offline(self, org_id: str, agent_id: str) -> None:
        for session in self.live():
            if session.org_id == org_id and session.agent_id == agent_id:
                await self.end(session, "agent_offline")

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self.live():
            await self.end(session, "server_shutdown")
