"""A WebRTC session: the browser's peer on one side, the agent's /client socket on the other.

Browser → server over the ``events`` data channel (CONTRACT §3): the string ``ping`` every
second (activity), and ``{"action": "mute" | "unmute" | "configure" | "inject_text" |
"set_context", ...}``. Microphone audio goes through an energy detector and becomes
``speech.started`` / ``speech.ended`` for the agent.

Agent → server (CONTRACT §6): ``bot.reply`` is "spoken": the browser gets ``bot.speaking``, one
``bot.word`` per word (the real client builds the bot's text only from these), ``bot.finished``,
while the outgoing track carries audio for as long as the text takes to say. ``history.*`` is
answered from an in-session list, because the SDK awaits those replies with no timeout.

Ending is the base class's job (exactly one ``call.ended``); :meth:`close_transport` tells the
browser why, then closes the peer, so no peer outlives its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.core import strictjson
from server.core.sessionconfig import filter_config
from server.errors import BadRequest, RateLimited
from server.log import event
from server.realtime.media import SpeechDetector, SpeechEvent, speech_seconds
from server.services.history import echo_request_id
from server.services.sessions import Session

if TYPE_CHECKING:
    from server.realtime.rtc import RtcPeer

log = logging.getLogger("voice.webrtc")
MAX_ACTION_BYTES = 16 * 1024
MAX_TEXT_CHARS = 4000
MAX_REPLY_CHARS = 10_000
MAX_HISTORY = 500
MAX_CONTEXT_KEYS = 64
TIMEOUT_REASONS = frozenset({"idle_timeout", "max_duration"})
Job = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reply:
    message_id: str
    text: str


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(8)


def _text(frame: Mapping[str, Any], name: str, limit: int) -> str:
    value = frame.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name} must be a non-empty string")
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters")
    return value.strip()


def _messages(frame: Mapping[str, Any]) -> list[dict[str, str]]:
    """``history.add`` / ``history.set`` messages: ``{role, text|content}`` objects, others skipped."""
    raw = frame.get("messages")
    if not isinstance(raw, list):
        raise BadRequest("messages must be a list of {role, text}")
    kept = []
    for item in raw[:MAX_HISTORY]:
        if isinstance(item, dict):
            role, text = item.get("role"), item.get("text", item.get("content"))
            if isinstance(role, str) and isinstance(text, str):
                kept.append({"role": role, "content": text, "text": text})
    return kept


class WebRtcSession(Session):
    transport = "webrtc"
    call_prefix = "wrt_"

    def __init__(
        self,
        org_id: str,
        agent_id: str,
        metadata: Mapping[str, Any],
        config: Mapping[str, Any],
        connect_seconds: float = 15.0,
    ) -> None:
        super().__init__(org_id, agent_id, metadata)
        self.connect_seconds = connect_seconds
        self._connected = asyncio.Event()
        self.config: dict[str, Any] = dict(config)
        self.peer: RtcPeer | None = None
        self.history: list[dict[str, str]] = []
        self.context: dict[str, Any] = {}
        self.muted = False
        self.detector = SpeechDetector()
        self._turn = 0
        self._channel_ready = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._inbox: asyncio.Queue[Job] = asyncio.Queue(maxsize=1024)
        self._replies: asyncio.Queue[Reply] = asyncio.Queue(maxsize=256)
        self._streams: dict[str, list[str]] = {}
        self._speaking: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, peer: RtcPeer) -> None:
        """Bind the answered peer and start the two workers (browser inbox, speaker)."""
        self.peer = peer
        self._tasks = [
            asyncio.create_task(self._work(), name=f"inbox-{self.call_id}"),
            asyncio.create_task(self._speak(), name=f"speaker-{self.call_id}"),
            asyncio.create_task(self._await_media(), name=f"connect-{self.call_id}"),
        ]

    async def _await_media(self) -> None:
        """A peer whose ICE/DTLS never completes (no route, a blocked port, a browser gone
        after the offer) ends after ``connect_seconds`` with ``connect_timeout``, freeing its
        slot, instead of holding it until the idle timeout."""
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_seconds)
        except TimeoutError:
            log.warning("webrtc media never connected in %.0fs: %s", self.connect_seconds, self.call_id)
            await self.end("connect_timeout")

    def started_frame(self) -> dict[str, Any]:
        frame = super().started_frame()
        if self.config:
            frame["config"] = self.config
            if isinstance(self.config.get("language"), str):
                frame["language"] = self.config["language"]
        return frame

    def to_browser(self, frame: Mapping[str, Any]) -> None:
        self.trace("server->browser", frame)
        if self.peer is not None:
            self.peer.send(frame)

    def _later(self, job: Job) -> None:
        """Run ``job`` on the inbox worker, in arrival order; dropped when the inbox is full."""
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._inbox.get()
            try:
                await job()
            except BadRequest as exc:
                self.to_browser({"event": "error", "error": exc.detail, "code": exc.code})
            except Exception:
                log.exception("error handling a data channel event on %s", self.call_id)

    # -- PeerEvents ---------------------------------------------------------------------------
    def on_channel_open(self) -> None:
        self.touch()
        self._channel_ready.set()

    def on_channel_message(self, message: str | bytes) -> None:
        if message == "ping":  # the browser's 1 s keep-alive (CONTRACT §3): not activity, no reply
            return
        try:
            self.inbound(len(message))
        except RateLimited as exc:  # dropped here: never queued, never sent to the agent
            self.to_browser({"event": "error", "error": exc.detail, "code": exc.code})
            return
        self._later(lambda: self._action(message))

    def on_audio(self, pcm: bytes, seconds: float) -> None:
        self.trace("browser->server", b"")  # counted, never kept
        if self.muted:
            return
        found = self.detector.feed(pcm, seconds)
        if found is not None:
            self._later(lambda: self._speech(found))

    def on_peer_state(self, state: str) -> None:
        if state == "connected":
            self._connected.set()
        if state in ("failed", "closed") and self.end_reason is None:
            task = asyncio.create_task(self.end("peer_disconnected"), name=f"end-{self.call_id}")
            self._tasks.append(task)

    # -- browser actions ----------------------------------------------------------------------
    async def _action(self, message: str | bytes) -> None:
        if len(message) > MAX_ACTION_BYTES:
            raise BadRequest(f"data channel messages are limited to {MAX_ACTION_BYTES} bytes")
        try:
            frame = strictjson.loads(message)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("data channel messages are JSON objects with an action") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
            raise BadRequest("data channel messages are JSON objects with an action")
        self.touch()
        self.trace("browser->server", {**frame, "event": frame["action"]})
        action = frame["action"]
        if action == "inject_text":
            await self.user_said(_text(frame, "text", MAX_TEXT_CHARS))
        elif action in ("mute", "unmute"):
            self.muted = action == "mute"
            ended = self.detector.reset() if self.muted else None
            if ended is not None:
                await self._speech(ended)
        elif action == "configure":
            kept, dropped = filter_config({k: v for k, v in frame.items() if k != "action"})
            if dropped:
                event(log, "browser config keys dropped", call_id=self.call_id, dropped=dropped)
            self.config.update(kept)
            await self.send_to_agent({"event": "call.updated", "config": self.config, **_language(kept)})
        elif action == "set_context":
            self._set_context(frame)
        else:
            raise BadRequest(f"unknown action {action[:64]!r}")

    async def user_said(self, text: str) -> None:
        """What the user said (typed or transcribed): to the agent and back to the browser."""
        message_id = new_message_id()
        self._remember("user", text)
        frame = {"event": "user.message", "text": text, "message_id": message_id}
        await self.send_to_agent(frame)
        self.to_browser(frame)

    def _set_context(self, frame: Mapping[str, Any]) -> None:
        key = _text(frame, "key", 128)
        value = frame.get("value")
        if value is None:
            self.context.pop(key, None)
        elif key in self.context or len(self.context) < MAX_CONTEXT_KEYS:
            self.context[key] = value
        else:
            raise BadRequest(f"at most {MAX_CONTEXT_KEYS} context keys")

    async def _speech(self, found: SpeechEvent) -> None:
        if found.kind == "started":
            self._turn += 1
            self.touch()
            frame: dict[str, Any] = {
                "event": "speech.started",
                "turn_id": self._turn,
                "confidence": round(found.level, 3),
                "timestamp": round(time.time() * 1000),
            }
        else:
            frame = {"event": "speech.ended", "turn_id": self._turn, "duration_ms": found.duration_ms}
        await self.send_to_agent(frame)
        self.to_browser(frame)

    # -- agent commands -----------------------------------------------------------------------
    async def handle_command(self, frame: Mapping[str, Any]) -> None:
        name = str(frame.get("event"))
        if name == "bot.reply":
            message_id = frame.get("message_id")
            self._queue_reply(
                message_id if isinstance(message_id, str) and message_id else new_message_id(),
                _text(frame, "text", MAX_REPLY_CHARS),
            )
        elif name == "bot.reply.stream":
            self._stream(frame)
        elif name in ("bot.cancel", "bot.clear"):
            if name == "bot.clear":
                while not self._replies.empty():
                    self._replies.get_nowait()
            wanted = frame.get("message_id")
            if self._speaking is not None and (not wanted or wanted == self._speaking):
                self._interrupt.set()
        elif name.startswith("history."):
            await self._history(name, frame)
        else:
            await super().handle_command(frame)

    def _queue_reply(self, message_id: str, text: str) -> None:
        try:
            self._replies.put_nowait(Reply(message_id, text))
        except asyncio.QueueFull:
            raise BadRequest("too many replies waiting to be spoken") from None

    def _stream(self, frame: Mapping[str, Any]) -> None:
        message_id, action = frame.get("message_id"), frame.get("action")
        if not isinstance(message_id, str) or not message_id:
            raise BadRequest("bot.reply.stream needs a message_id")
        if action == "start":
            self._streams[message_id] = []
        elif action == "chunk":
            parts = self._streams.setdefault(message_id, [])
            token = frame.get("token", frame.get("text"))
            if isinstance(token, str) and sum(map(len, parts)) + len(token) <= MAX_REPLY_CHARS:
                parts.append(token)
        elif action == "end":
            text = "".join(self._streams.pop(message_id, [])).strip()
            if text:
                self._queue_reply(message_id, text)
        else:
            raise BadRequest("bot.reply.stream action must be start, chunk or end")

    async def _history(self, name: str, frame: Mapping[str, Any]) -> None:
        # Every history.* request is answered: the SDK's promises wait forever otherwise.
        if name == "history.get":
            data = {"event": "history.data", "messages": list(self.history)}
            await self.send_to_agent(echo_request_id(data, frame))
            return
        if name == "history.set":
            self.history = _messages(frame)
        elif name == "history.add":
            self.history.extend(_messages(frame))
            del self.history[:-MAX_HISTORY]
        elif name == "history.clear":
            self.history.clear()
        # set_vars / add_context / set_instructions shape the agent's own prompt; nothing to keep.
        await self.send_to_agent(
            echo_request_id({"event": "history.updated", "count": len(self.history)}, frame)
        )

    def _remember(self, role: str, text: str) -> None:
        self.history.append({"role": role, "content": text, "text": text})  # one shape, as chat's
        del self.history[:-MAX_HISTORY]

    # -- speaking -----------------------------------------------------------------------------
    async def _speak(self) -> None:
        # Replies that arrive before the browser's channel opens (a greeting on call.started)
        # wait for it, so words and audio line up with what the user hears.
        await self._channel_ready.wait()
        while True:
            reply = await self._replies.get()
            await self._say(reply)

    async def _say(self, reply: Reply) -> None:
        assert self.peer is not None
        words = reply.text.split()
        seconds = speech_seconds(reply.text)
        gap = seconds / max(1, len(words))
        self._speaking, interrupted, spoken = reply.message_id, False, 0
        self._interrupt.clear()
        self.touch()
        self._remember("assistant", reply.text)
        self.peer.voice.speak(seconds)
        started = time.monotonic()
        speaking = {"event": "bot.speaking", "message_id": reply.message_id, "text": reply.text}
        self.to_browser(speaking)
        await self.send_to_agent(speaking)
        for index, word in enumerate(words):
            self.to_browser(
                {"event": "bot.word", "message_id": reply.message_id, "word": word, "word_index": index}
            )
            spoken = index + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), gap)
                interrupted = True
                break
        self._speaking = None
        duration_ms = round((time.monotonic() - started) * 1000)
        if interrupted:
            self.peer.voice.stop()
            done: dict[str, Any] = {"event": "bot.interrupted", "message_id": reply.message_id}
        else:
            done = {"event": "bot.finished", "message_id": reply.message_id, "duration_ms": duration_ms}
        self.to_browser({**done, "text": reply.text})
        await self.send_to_agent(done)
        # What the user heard, for the SDK's call.messages / transcript (pinecall/sdk bot.ts):
        # all of it, or the words spoken before an interruption.
        heard = reply.text if not interrupted else " ".join(words[:spoken])
        if heard:
            await self.send_to_agent(
                {"event": "message.confirmed", "message_id": reply.message_id, "text": heard}
            )

    # -- ending -------------------------------------------------------------------------------
    async def on_timeout_warning(self, seconds_left: float) -> None:
        frame = {"event": "session.idle_warning", "remaining_seconds": max(0, round(seconds_left))}
        self.to_browser(frame)
        await self.send_to_agent(frame)

    async def close_transport(self, reason: str) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        peer = self.peer
        if peer is None:
            return
        if reason in TIMEOUT_REASONS:
            timeout = {"event": "session.timeout", "reason": reason}
            self.to_browser(timeout)
            with contextlib.suppress(Exception):
                await self.send_to_agent(timeout)
        self.to_browser({"event": "call.ended", "reason": reason})
        if reason != "peer_disconnected":
            await peer.flush()
        await peer.close()

    async def abort(self) -> None:
        """Undo a session that was never admitted: stop the workers and close the peer."""
        await self.close_transport("start_failed")


def _language(config: Mapping[str, Any]) -> dict[str, Any]:
    language = config.get("language")
    return {"language": language} if isinstance(language, str) else {}
