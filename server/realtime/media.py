"""Audio for WebRTC sessions as plain PCM (16-bit signed, native byte order), no codec here.

* :class:`VoiceSource` is what the outgoing track plays: silence, or while the bot "speaks" a
  synthetic voiced sound (a 140 Hz buzz with harmonics and a ~4 Hz syllable rhythm) for as long
  as the text takes to say. The server has no TTS; the point is real audio of the right length
  on the wire, so a client sees and hears the bot talking.
* :class:`SpeechDetector` turns incoming PCM into ``started`` / ``ended`` events from its
  energy (RMS) with a short attack and a longer hangover, which is enough to drive
  ``speech.started`` / ``speech.ended`` for the agent.

Time here is counted in samples, never read from a clock, so both are deterministic.
:mod:`server.realtime.rtc` wraps them in aiortc frames.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from functools import cache

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms, the Opus frame aiortc sends
WORDS_PER_MINUTE = 150.0
MIN_SPEECH_SECONDS = 0.4


def speech_seconds(text: str) -> float:
    """How long ``text`` takes to say at ~150 words per minute."""
    words = len(text.split())
    return max(MIN_SPEECH_SECONDS, words * 60.0 / WORDS_PER_MINUTE)


@cache
def voice_table(sample_rate: int = SAMPLE_RATE) -> bytes:
    """One second of the synthetic voice, computed once and then looped."""
    fundamental, syllables, peak = 140.0, 4.0, 9000.0
    harmonics = ((1, 1.0), (2, 0.5), (3, 0.3), (4, 0.15))
    norm = sum(weight for _, weight in harmonics)
    samples = array("h")
    for n in range(sample_rate):
        t = n / sample_rate
        tone = sum(w * math.sin(2 * math.pi * fundamental * k * t) for k, w in harmonics) / norm
        # Syllables: the envelope swings between 100 % and 20 % four times a second.
        envelope = 0.6 + 0.4 * math.cos(2 * math.pi * syllables * t)
        samples.append(int(peak * envelope * tone))
    return samples.tobytes()


class VoiceSource:
    """PCM for the outgoing track: silence, or the synthetic voice for a set number of samples."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self._table = voice_table(sample_rate)
        self._position = 0  # in samples, into the looped table
        self._remaining = 0  # samples of voice still to play

    @property
    def speaking(self) -> bool:
        return self._remaining > 0

    def speak(self, seconds: float) -> None:
        """Play the voice for ``seconds`` from now (replaces what was left)."""
        self._remaining = max(0, int(seconds * self.sample_rate))

    def stop(self) -> None:
        self._remaining = 0

    def next_chunk(self, samples: int = FRAME_SAMPLES) -> bytes:
        """The next ``samples`` of mono audio."""
        silence = bytes(2 * samples)
        if self._remaining <= 0:
            return silence
        voiced = min(samples, self._remaining)
        start = self._position * 2
        end = start + voiced * 2
        table = self._table
        # Past the end of the one-second loop, wrap around to its start.
        chunk = table[start:end] if end <= len(table) else table[start:] + table[: end - len(table)]
        self._position = (self._position + voiced) % (len(table) // 2)
        self._remaining -= voiced
        return chunk + silence[: 2 * (samples - voiced)]


def rms(pcm: bytes, stride: int = 4) -> float:
    """Root mean square of 16-bit PCM, reading every ``stride``-th sample (cheap enough per frame)."""
    usable = len(pcm) - len(pcm) % 2
    if usable == 0:
        return 0.0
    samples = array("h", pcm[:usable])[::stride]
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    kind: str  # "started" | "ended"
    at: float  # seconds of audio fed so far when it happened
    duration_ms: int = 0  # for "ended": how long the speech lasted
    level: float = 0.0  # for "started": RMS that triggered it, 0..1 of full scale


class SpeechDetector:
    """Energy-based voice activity: ``started`` after ``attack`` seconds above the threshold,
    ``ended`` after ``hangover`` seconds below it."""

    def __init__(self, threshold: float = 600.0, attack: float = 0.06, hangover: float = 0.6) -> None:
        self.threshold = threshold
        self.attack = attack
        self.hangover = hangover
        self.active = False
        self._clock = 0.0
        self._loud_for = 0.0
        self._quiet_for = 0.0
        self._started_at = 0.0

    def feed(self, pcm: bytes, seconds: float) -> SpeechEvent | None:
        """Account ``seconds`` of audio whose samples are ``pcm``; an event when the state flips."""
        self._clock += seconds
        level = rms(pcm)
        if level >= self.threshold:
            self._loud_for += seconds
            self._quiet_for = 0.0
            if not self.active and self._loud_for >= self.attack:
                self.active = True
                self._started_at = self._clock - self._loud_for
                return SpeechEvent("started", self._started_at, level=min(1.0, level / 32768.0))
        else:
            self._quiet_for += seconds
            self._loud_for = 0.0
            if self.active and self._quiet_for >= self.hangover:
                return self.reset()
        return None

    def reset(self) -> SpeechEvent | None:
        """Force silence (the user muted): ``ended`` if speech was going on."""
        self._loud_for = 0.0
        if not self.active:
            return None
        self.active = False
        spoken = max(0.0, self._clock - self._quiet_for - self._started_at)
        self._quiet_for = 0.0
        return SpeechEvent("ended", self._clock, duration_ms=round(spoken * 1000))
