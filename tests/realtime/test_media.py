"""The PCM voice source and the energy speech detector (pure, time counted in samples)."""

from __future__ import annotations

from server.realtime.media import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SpeechDetector,
    VoiceSource,
    rms,
    speech_seconds,
)

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


def test_speech_lasts_about_150_words_a_minute() -> None:
    assert speech_seconds(" ".join(["word"] * 150)) == 60.0
    assert speech_seconds("hi") == 0.4  # never shorter than a short syllable burst


def test_voice_plays_for_the_requested_time_then_silence() -> None:
    source = VoiceSource()
    source.speak(0.05)  # 2400 samples = 2.5 frames
    chunks = [source.next_chunk() for _ in range(4)]
    assert all(len(c) == 2 * FRAME_SAMPLES for c in chunks)
    assert rms(chunks[0]) > 1000 and rms(chunks[1]) > 1000
    assert rms(chunks[2]) > 0 and chunks[2][FRAME_SAMPLES:] == bytes(FRAME_SAMPLES)
    assert chunks[3] == bytes(2 * FRAME_SAMPLES) and not source.speaking


def test_voice_loops_its_table_without_gaps() -> None:
    source = VoiceSource()
    source.speak(3.5)  # past the one-second table three times
    total = sum(len(source.next_chunk()) for _ in range(150))
    assert total == 150 * 2 * FRAME_SAMPLES and source.speaking


def test_stop_silences_at_once() -> None:
    source = VoiceSource()
    source.speak(5.0)
    source.stop()
    assert source.next_chunk() == bytes(2 * FRAME_SAMPLES)


def feed(detector: SpeechDetector, pcm: bytes, frames: int) -> list[str]:
    events = [detector.feed(pcm, FRAME_SECONDS) for _ in range(frames)]
    return [e.kind for e in events if e is not None]


def test_detector_starts_on_sustained_energy_and_ends_after_the_hangover() -> None:
    loud = VoiceSource()
    loud.speak(10)
    voice = loud.next_chunk()
    silence = bytes(2 * FRAME_SAMPLES)
    detector = SpeechDetector(attack=0.06, hangover=0.6)
    assert feed(detector, voice, 2) == []  # 40 ms: not yet
    assert feed(detector, voice, 1) == ["started"]
    assert feed(detector, voice, 20) == []
    assert feed(detector, silence, 29) == []  # 580 ms of silence: still a pause
    ended = detector.feed(silence, FRAME_SECONDS)
    assert ended is not None and ended.kind == "ended"
    assert 400 <= ended.duration_ms <= 500  # 23 loud frames = 460 ms


def test_a_click_is_not_speech() -> None:
    loud = VoiceSource()
    loud.speak(10)
    detector = SpeechDetector()
    assert feed(detector, loud.next_chunk(), 1) == []
    assert feed(detector, bytes(2 * FRAME_SAMPLES), 50) == []


def test_reset_ends_speech_in_progress_once() -> None:
    loud = VoiceSource()
    loud.speak(10)
    detector = SpeechDetector()
    feed(detector, loud.next_chunk(), 10)
    ended = detector.reset()
    assert ended is not None and ended.kind == "ended"
    assert detector.reset() is None
