"""WebRTC peers with aiortc: the only module that imports aiortc, aioice or av.

:class:`RtcEngine` (one per process, owned by the app's lifespan) answers non-trickle offers
(CONTRACT §3): it sets the browser's offer, adds the outgoing voice track, and waits for ICE
gathering to finish so the answer SDP carries every candidate. It tracks every peer it built,
and :meth:`RtcEngine.aclose` closes whatever is left at shutdown, so no peer outlives the node.

:class:`RtcPeer` is one connection. Its owner (a WebRTC session) receives what happens through
the :class:`PeerEvents` callbacks: the ``events`` data channel opening, its messages, decoded
microphone audio, and connection-state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from av import AudioFrame

from server.errors import BadRequest
from server.realtime.media import FRAME_SAMPLES, SAMPLE_RATE, VoiceSource

log = logging.getLogger("voice.rtc")
EVENTS_LABEL = "events"  # the data channel the browser opens (CONTRACT §3)
MAX_PENDING_EVENTS = 512  # events queued for a data channel that is not open yet
FLUSH_SECONDS = 0.5


class PeerEvents(Protocol):
    """What a peer reports to its owner. Callbacks run on the event loop and must not block."""

    def on_channel_open(self) -> None: ...

    def on_channel_message(self, message: str | bytes) -> None: ...

    def on_audio(self, pcm: bytes, seconds: float) -> None: ...

    def on_peer_state(self, state: str) -> None: ...


def pin_host_addresses(addresses: Sequence[str]) -> None:
    """Make aioice offer exactly ``addresses`` as host candidates (``VOICE_RTC_HOST_ADDRESSES``).

    aioice gathers host candidates from every interface and always skips 127.0.0.1, and it has
    no supported hook to choose them: aiortc/aioice#2 (finer address selection) is open, and #57
    was declined in favour of a filter callable that aioice 0.13 does not have. Its
    ``Connection.gather_candidates`` looks up the module function ``get_host_addresses`` at call
    time, so this replaces that one function, process-wide. It is applied only when the setting is
    set (a loopback-only deployment or test, or a host whose public address must be pinned).
    """
    pinned = tuple(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def validate_offer(sdp: str) -> None:
    """Refuse an SDP that cannot be a browser's audio offer, before any peer exists."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises assorted errors on garbage; all mean "bad SDP"
        raise BadRequest("sdp is not a parseable SDP offer") from None
    kinds = [media.kind for media in description.media]
    if "audio" not in kinds:
        raise BadRequest("sdp must offer an audio section")
    if any(kind not in ("audio", "application") for kind in kinds):
        raise BadRequest("sdp may only offer audio and a data channel")
    for media in description.media:
        ice, dtls = media.ice, media.dtls
        if (
            ice is None
            or dtls is None
            or not ice.usernameFragment
            or not ice.password
            or not dtls.fingerprints
        ):
            raise BadRequest("sdp is missing ICE credentials or a DTLS fingerprint")


def ice_configuration(servers: Sequence[Mapping[str, Any]]) -> RTCConfiguration:
    """The ICE servers from settings. An empty list stays empty: aiortc would otherwise fall back
    to a public Google STUN server, and a server must not contact a third party unless told to."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers
        ]
    )


class VoiceTrack(MediaStreamTrack):
    """The outgoing audio: 20 ms frames of :class:`VoiceSource` PCM, paced in real time."""

    kind = "audio"

    def __init__(self, source: VoiceSource) -> None:
        super().__init__()
        self.source = source
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            await asyncio.sleep(max(0.0, self._start + self._pts / SAMPLE_RATE - loop.time()))
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        plane = frame.planes[0]
        pcm = self.source.next_chunk(FRAME_SAMPLES)
        plane.update(pcm + bytes(plane.buffer_size - len(pcm)))
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class RtcPeer:
    """One peer connection, its voice track, its ``events`` channel and its reader tasks."""

    def __init__(self, pc: RTCPeerConnection, events: PeerEvents, peers: set[RtcPeer]) -> None:
        self.pc = pc
        self._peers = peers  # the engine's live set: a peer leaves it when it closes
        self.pc_id = "pc_" + secrets.token_hex(8)
        self.events = events
        self.voice = VoiceSource()
        self.track = VoiceTrack(self.voice)
        self.answer_sdp = ""
        self.closed = False
        self._channel: Any = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self._tasks: set[asyncio.Task[None]] = set()
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    @property
    def channel_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def send(self, frame: Mapping[str, Any]) -> None:
        """One JSON event to the browser; queued (bounded) until the channel opens."""
        if self.closed:
            return
        text = json.dumps(frame, separators=(",", ":"))
        if self.channel_open:
            self._channel.send(text)
        else:
            self._pending.append(text)

    async def flush(self) -> None:
        """Give queued channel data a moment to leave before the peer closes (bounded)."""
        if not self.channel_open:
            return
        channel = self._channel
        if channel.bufferedAmount > 0:
            drained = asyncio.Event()
            channel.bufferedAmountLowThreshold = 0  # aiortc emits the event when it drops to 0
            channel.once("bufferedamountlow", drained.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), FLUSH_SECONDS)
        # bufferedAmount counts what SCTP has not taken yet; one more tick lets it reach the socket.
        await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._peers.discard(self)
        self.voice.stop()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.track.stop()

    # -- aiortc callbacks ---------------------------------------------------------------------
    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_LABEL or self._channel is not None:
            return  # other channels are not part of the protocol; their messages are ignored
        self._channel = channel
        channel.on("message", self.events.on_channel_message)
        if channel.readyState == "open":
            self._opened()
        else:
            channel.on("open", self._opened)

    def _opened(self) -> None:
        while self._pending and self.channel_open:
            self._channel.send(self._pending.popleft())
        self.events.on_channel_open()

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            task = asyncio.create_task(self._read_audio(track), name=f"mic-{self.pc_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_audio(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while not self.closed:
                frame = await track.recv()
                channels = len(frame.layout.channels)
                pcm = bytes(frame.planes[0])[: frame.samples * channels * 2]
                self.events.on_audio(pcm, frame.samples / frame.sample_rate)

    def _on_state(self) -> None:
        self.events.on_peer_state(self.pc.connectionState)


class RtcEngine:
    """Builds, tracks and closes this node's peers."""

    def __init__(self, ice_servers: Sequence[Mapping[str, Any]], host_addresses: Sequence[str] = ()) -> None:
        self._ice_servers = tuple(ice_servers)
        self._peers: set[RtcPeer] = set()
        self.peers_built = 0  # every peer ever built, closed or not (dev-only /debug/sessions)
        if host_addresses:
            pin_host_addresses(host_addresses)

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    async def answer(self, offer_sdp: str, events: PeerEvents) -> RtcPeer:
        """A peer for ``offer_sdp`` whose ``answer_sdp`` holds every local candidate.

        Nothing is left behind on failure: the peer is closed before the error propagates.
        """
        validate_offer(offer_sdp)
        peer = RtcPeer(RTCPeerConnection(ice_configuration(self._ice_servers)), events, self._peers)
        self._peers.add(peer)
        self.peers_built += 1
        try:
            try:
                await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as exc:  # ValueError, InvalidStateError... from an SDP the parser let through
                log.info("offer refused by the WebRTC stack: %s", type(exc).__name__)
                raise BadRequest("sdp was refused by the WebRTC stack") from None
            peer.pc.addTrack(peer.track)
            # Non-trickle: setLocalDescription returns once ICE gathering is complete.
            await peer.pc.setLocalDescription(await peer.pc.createAnswer())
            peer.answer_sdp = peer.pc.localDescription.sdp
        except BaseException:
            await peer.close()
            raise
        return peer

    async def aclose(self) -> None:
        """Close every peer still open (node shutdown)."""
        for peer in list(self._peers):
            await peer.close()
