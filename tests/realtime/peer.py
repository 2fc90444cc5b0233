"""A Python aiortc peer that talks to /webrtc/offer the way @pinecall/web does (CONTRACT §3).

Non-trickle offer with a microphone track and an ``events`` data channel; events from the server
land in a queue; frames of the server's audio track are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.realtime.media import VoiceSource
from server.realtime.rtc import VoiceTrack, pin_host_addresses

# Everything stays on loopback: the server offers 127.0.0.1 (VOICE_RTC_HOST_ADDRESSES) and so
# does this peer; aioice would skip loopback otherwise.
pin_host_addresses(["127.0.0.1"])


class BrowserPeer:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing off-host
        self.mic = VoiceSource()
        self.pc.addTrack(VoiceTrack(self.mic))
        self.channel = self.pc.createDataChannel("events", ordered=True)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []
        self.audio_frames = 0
        self.audio_bytes = 0
        self.opened = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            frame = json.loads(message)
            if isinstance(frame, dict):
                self.seen.append(frame)
                self.events.put_nowait(frame)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._count(track)))

    async def _count(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.audio_frames += 1
                self.audio_bytes += frame.samples

    async def offer_sdp(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers every candidate
        return str(self.pc.localDescription.sdp)

    async def connect(
        self, http: httpx.AsyncClient, token: str, **extra: Any
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST the offer; on 200 apply the answer. Returns (response, body)."""
        body = {"sdp": await self.offer_sdp(), "type": "offer", "token": token, **extra}
        response = await http.post("/webrtc/offer", json=body)
        answer = response.json()
        if response.status_code == 200:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return response, answer

    def act(self, action: dict[str, Any] | str) -> None:
        self.channel.send(action if isinstance(action, str) else json.dumps(action))

    async def wait_for(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next event called ``name`` whose fields include ``match``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await asyncio.wait_for(self.events.get(), max(0.01, deadline - loop.time()))
            if frame.get("event") == name and all(frame.get(k) == v for k, v in match.items()):
                return frame

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
