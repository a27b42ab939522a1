"""The simulator's server VAD on real espeak-ng speech, silence and noise."""

from __future__ import annotations

import pytest

from kioskd.sim.vad import EnergyVad, SpeechStarted, SpeechStopped, frame_levels_dbfs, threshold_to_dbfs
from tests.sim.conftest import noise, scaled, silence, speech


def speech_span_ms(pcm: bytes, level_dbfs: float = -45.0) -> tuple[int, int]:
    """First and last 10 ms frame of ``pcm`` above ``level_dbfs`` (start ms, end ms)."""
    loud = [i for i, level in enumerate(frame_levels_dbfs(pcm)) if level > level_dbfs]
    return loud[0] * 10, (loud[-1] + 1) * 10


def run(vad: EnergyVad, pcm: bytes, chunk: int = 960) -> list[SpeechStarted | SpeechStopped]:
    events: list[SpeechStarted | SpeechStopped] = []
    for i in range(0, len(pcm), chunk):
        events += vad.feed(pcm[i : i + chunk])
    return events


def test_one_utterance_gives_one_start_with_prefix_and_one_stop_after_the_silence() -> None:
    words = speech("Where can I buy a ticket for the museum?")
    first, last = speech_span_ms(words)
    audio = silence(1000) + words + silence(1000)
    events = run(EnergyVad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500), audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    start, stop = events
    assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
    assert 1000 + first <= start.onset_ms <= 1000 + first + 50
    assert start.audio_start_ms == start.onset_ms - 300
    assert 1000 + last + 500 <= stop.audio_end_ms <= 1000 + last + 500 + 20


@pytest.mark.parametrize("voice", ["en-us", "en-gb"])
def test_speech_is_detected_in_both_espeak_voices(voice: str) -> None:
    audio = silence(500) + speech("The opening hours, please.", voice) + silence(800)
    events = run(EnergyVad(), audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_silence_and_quiet_noise_never_start_a_turn() -> None:
    assert run(EnergyVad(), silence(3000)) == []
    assert run(EnergyVad(), noise(3000, dbfs=-60)) == []


def test_threshold_decides_what_counts_as_speech() -> None:
    quiet_noise = noise(2000, dbfs=-60)
    assert run(EnergyVad(threshold=0.5), quiet_noise) == []
    assert [type(e) for e in run(EnergyVad(threshold=0.0), quiet_noise)] == [SpeechStarted]
    distant = silence(500) + scaled(speech("Excuse me, is anyone there?"), -30) + silence(1000)
    assert run(EnergyVad(threshold=0.9, silence_duration_ms=800), distant) == []
    heard = run(EnergyVad(threshold=0.3, silence_duration_ms=800), distant)
    assert [type(e) for e in heard] == [SpeechStarted, SpeechStopped]


def test_threshold_mapping_is_the_documented_one() -> None:
    assert threshold_to_dbfs(0.0) == -70.0
    assert threshold_to_dbfs(0.5) == -45.0
    assert threshold_to_dbfs(1.0) == -20.0


def test_prefix_padding_moves_the_reported_start_but_never_before_zero() -> None:
    audio = silence(400) + speech("Hello there.") + silence(800)
    no_prefix = run(EnergyVad(prefix_padding_ms=0), audio)[0]
    long_prefix = run(EnergyVad(prefix_padding_ms=1000), audio)[0]
    assert isinstance(no_prefix, SpeechStarted) and isinstance(long_prefix, SpeechStarted)
    assert no_prefix.audio_start_ms == no_prefix.onset_ms
    assert long_prefix.audio_start_ms == 0


def test_silence_duration_decides_whether_a_pause_ends_the_turn() -> None:
    audio = silence(300) + speech("One ticket.") + silence(400) + speech("For an adult.") + silence(1200)
    short = run(EnergyVad(silence_duration_ms=200), audio)
    long = run(EnergyVad(silence_duration_ms=800), audio)
    assert [type(e) for e in short] == [SpeechStarted, SpeechStopped] * 2
    assert [type(e) for e in long] == [SpeechStarted, SpeechStopped]


def test_events_do_not_depend_on_how_the_audio_is_chunked() -> None:
    audio = silence(700) + speech("Is the cafe open?") + silence(900)
    whole = run(EnergyVad(), audio, chunk=len(audio))
    odd_chunks = run(EnergyVad(), audio, chunk=38)
    assert whole == odd_chunks
    assert len(whole) == 2


def test_reset_forgets_a_turn_in_progress() -> None:
    words = speech("Hello there, can you help me?")
    vad = EnergyVad()
    assert [type(e) for e in vad.feed(silence(200) + words[: len(words) // 2])] == [SpeechStarted]
    vad.reset()
    assert not vad.in_speech
    later = vad.feed(silence(1000))
    assert later == []
