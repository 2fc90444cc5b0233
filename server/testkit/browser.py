"""An aiortc stand-in for ``@pinecall/web`` in a test: a non-trickle offer with a microphone
track and an ``events`` data channel to ``POST /webrtc/offer`` (CONTRACT §3), the server's
events kept in order, the frames of its audio track counted.

It meets the server on loopback: the server booted by this kit offers 127.0.0.1
(VOICE_RTC_HOST_ADDRESSES) and so does this peer, through the same pin the server uses (aioice
skips loopback otherwise). A browser call to a server elsewhere needs that server reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.realtime.media import VoiceSource
from server.realtime.rtc import VoiceTrack, pin_host_addresses
from server.testkit.agent import Frames, SessionRefused

if TYPE_CHECKING:
    from server.testkit.agent import VoiceAgent

CONNECT_SECONDS = 15.0


class BrowserCall:
    """One WebRTC session; ``session_id`` once :meth:`open` returned."""

    def __init__(self, agent: VoiceAgent, token: str) -> None:
        self.agent = agent
        self.token = token
        self.session_id = ""
        self.audio_frames = 0
        self._frames = Frames()
        self._pc: RTCPeerConnection | None = None
        self._channel: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, config: Mapping[str, Any] | None) -> None:
        pin_host_addresses(["127.0.0.1"])
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # nothing off-host
        pc.addTrack(VoiceTrack(VoiceSource()))
        channel = self._channel = pc.createDataChannel("events", ordered=True)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
        body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer", "token": self.token}
        if config:
            body["config"] = dict(config)
        async with httpx.AsyncClient(base_url=self.agent.server.url, timeout=10) as http:
            response = await http.post("/webrtc/offer", json=body)
        answer = response.json()
        if response.status_code != 200:
            await pc.close()
            raise SessionRefused(response.status_code, answer.get("code", ""), answer.get("detail", ""))
        self.session_id = answer["session_id"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        await asyncio.wait_for(opened.wait(), CONNECT_SECONDS)

    def _on_message(self, message: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            frame = json.loads(message)
            if isinstance(frame, dict):
                self._tasks.append(asyncio.ensure_future(self._frames.add(frame)))

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(self._count(track)))

    async def _count(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.audio_frames += 1

    async def _say(self, text: str, within: float) -> str:
        start = len(self._frames.items)
        self._channel.send(json.dumps({"action": "inject_text", "text": text}))
        heard = await self._frames.wait_for("user.message", within, start=start, stop_on=("error",))
        start = self._frames.items.index(heard) + 1
        finished = await self._frames.wait_for("bot.finished", within, start=start)
        return str(finished.get("text", ""))

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._pc is not None:
            await self._pc.close()

    # -- blocking API ------------------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        """The call's id (``wrt_…``), as the agent saw it in ``call.started``."""
        return self.agent.call_id_of(self.session_id)

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The server's events on the data channel, oldest first."""
        return list(self._frames.items)

    def say(self, text: str, timeout: float = 15.0) -> str:
        """Say ``text`` (the ``inject_text`` action: the agent gets it as ``user.message``); the
        text of the ``bot.finished`` that follows, once the reply has been spoken."""
        return self.agent.server.run(self._say(text, timeout), None)

    def send(self, action: Mapping[str, Any]) -> None:
        """A raw data-channel action (``mute``, ``configure``, ``set_context``...)."""

        async def send() -> None:
            self._channel.send(json.dumps(dict(action)))

        self.agent.server.run(send())

    def wait_for(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        return self.agent.server.run(self._frames.wait_for(event, timeout, **match), None)

    def close(self) -> None:
        """Hang up as a closing tab does: the peer connection closes."""
        with contextlib.suppress(Exception):
            self.agent.server.run(self._close(), 10)

    def __enter__(self) -> BrowserCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
