"""The reply voice: espeak-ng speech at 24 kHz, an audible fallback, and a cache."""

from __future__ import annotations

import pytest

from kioskd.sim import DEFAULT_REPLIES, ReplyVoice
from kioskd.sim.vad import EnergyVad, SpeechStarted, SpeechStopped, frame_levels_dbfs
from kioskd.sim.voice import synthesize_espeak

BYTES_PER_S = 48_000


def test_default_replies_are_spoken_sentences_of_three_to_five_seconds() -> None:
    voice = ReplyVoice()
    assert voice.engine == "espeak-ng"
    for text in DEFAULT_REPLIES:
        pcm = voice.pcm(text)
        assert len(pcm) % 2 == 0
        assert 3.0 <= len(pcm) / BYTES_PER_S <= 5.0, text
        events = EnergyVad(silence_duration_ms=700).feed(pcm + bytes(BYTES_PER_S))
        assert [type(e) for e in events] == [SpeechStarted, SpeechStopped], text


def test_speed_changes_the_length_of_the_speech() -> None:
    voice = ReplyVoice()
    text = "The museum closes at six in the evening."
    assert len(voice.pcm(text, speed=1.5)) < 0.8 * len(voice.pcm(text, speed=1.0))


def test_synthesis_is_cached() -> None:
    voice = ReplyVoice()
    text = "Tickets are sold at the front desk."
    assert voice.pcm(text) is voice.pcm(text)


def test_without_espeak_the_reply_is_a_clearly_audible_signal_as_long_as_the_text() -> None:
    voice = ReplyVoice(use_espeak=False)
    assert voice.engine == "tones"
    short, long = voice.pcm("Yes."), voice.pcm("The information desk is on the ground floor, on your left.")
    assert len(long) > 3 * len(short)
    levels = frame_levels_dbfs(long)
    assert sorted(levels)[len(levels) // 2] > -30.0  # the median frame is loud
    assert max(abs(int.from_bytes(long[i : i + 2], "little", signed=True)) for i in range(0, 48_000, 2)) < 32767


def test_a_failing_espeak_is_reported_not_crashed() -> None:
    with pytest.raises(RuntimeError, match="espeak-ng"):
        synthesize_espeak("hello", binary="/bin/false")
    with pytest.raises(RuntimeError, match="could not run"):
        synthesize_espeak("hello", binary="/nonexistent/espeak-ng")
