"""Reply audio through the jitter buffer and a real ALSA output stream, read back from the rig's speaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from kioskd.audio.dsp import REALTIME_RATE, dbfs, to_int16
from kioskd.audio.playback import JitterBuffer, Playback
from kioskd.config import AudioConfig
from tests.audio.signals import frame_frequencies, seconds_of, tone, wait_until
from tests.rig import ALSA_DEVICE, AudioRig, SpeakerRecording

pytestmark = [pytest.mark.rig, pytest.mark.asyncio]

CFG = AudioConfig(output_device=ALSA_DEVICE, jitter_target_ms=60)
BLOCK_S = CFG.block_ms / 1000
HOP_S = 0.01  # the resolution of the read-back measurement


class Speaker:
    def __init__(self, buffer: JitterBuffer, playback: Playback) -> None:
        self.buffer = buffer
        self.playback = playback


@pytest_asyncio.fixture
async def speaker(audio_rig: AudioRig) -> AsyncIterator[Speaker]:
    buffer = JitterBuffer(CFG)
    up = asyncio.Event()
    playback = Playback(CFG, buffer, lambda ok, _reason: up.set() if ok else None)
    playback.start()
    await asyncio.wait_for(up.wait(), 20)
    try:
        yield Speaker(buffer, playback)
    finally:
        playback.stop()
        await playback.wait_closed()


async def record_until_quiet(recording: SpeakerRecording, buffer: JitterBuffer, quiet_s: float = 0.4) -> np.ndarray:
    """Wait until nothing is left to play and the speaker has been silent for ``quiet_s``, then stop."""
    await wait_until(lambda: buffer.current_item() is None, 30, "the buffer to empty")

    def quiet_tail() -> bool:
        data = recording.snapshot()
        n = int(quiet_s * recording.rate)
        return len(data) > n and np.max(np.abs(data[-n:])) < 1e-3 and np.max(np.abs(data)) > 0.01

    await wait_until(quiet_tail, 30, "the speaker to fall silent")
    return await asyncio.to_thread(recording.stop)


async def test_what_comes_out_of_the_speaker_is_what_was_queued(audio_rig: AudioRig, speaker: Speaker) -> None:
    recording = await asyncio.to_thread(audio_rig.record_speaker)
    queued = tone(440, 1.0, REALTIME_RATE, amplitude=0.25)
    for i in range(0, len(queued), 2400):  # arriving in 100 ms deltas, as from the network
        speaker.buffer.enqueue("reply", to_int16(queued[i : i + 2400]))
    speaker.buffer.end_item("reply")
    heard = await record_until_quiet(recording, speaker.buffer)

    freqs = frame_frequencies(heard, recording.rate, HOP_S)
    assert seconds_of(freqs, 440) == pytest.approx(1.0, abs=BLOCK_S)
    loud = heard[np.abs(heard) > 0.02]
    assert dbfs(loud) == pytest.approx(dbfs(queued), abs=0.5)
    assert speaker.buffer.played_samples("reply") == REALTIME_RATE
    assert speaker.playback.stats.underruns == 0


async def test_flush_stops_the_speaker_within_a_block_and_the_counter_says_how_much_was_heard(
    audio_rig: AudioRig, speaker: Speaker
) -> None:
    recording = await asyncio.to_thread(audio_rig.record_speaker)
    buffer = speaker.buffer
    buffer.enqueue("long", to_int16(tone(600, 3.0, REALTIME_RATE, amplitude=0.3)))
    buffer.end_item("long")
    await wait_until(lambda: buffer.played_samples("long") >= 0.7 * REALTIME_RATE, 20, "0.7 s to play")
    buffer.flush()
    at_flush = buffer.played_samples("long")
    blocks = buffer.blocks
    await wait_until(lambda: buffer.blocks >= blocks + 10, 20, "ten more output blocks")
    assert buffer.played_samples("long") == at_flush  # not one more sample after the flush
    heard = await record_until_quiet(recording, buffer)

    played_s = seconds_of(frame_frequencies(heard, recording.rate, HOP_S), 600)
    assert played_s < 2.0  # the rest of the 3 s reply was dropped, not drained
    assert played_s == pytest.approx(at_flush / REALTIME_RATE, abs=BLOCK_S + HOP_S)


async def test_each_items_played_counter_matches_what_came_out(audio_rig: AudioRig, speaker: Speaker) -> None:
    recording = await asyncio.to_thread(audio_rig.record_speaker)
    buffer = speaker.buffer
    buffer.enqueue("first", to_int16(tone(440, 0.5, REALTIME_RATE, amplitude=0.3)))
    buffer.end_item("first")
    buffer.enqueue("second", to_int16(tone(1000, 0.8, REALTIME_RATE, amplitude=0.3)))
    buffer.end_item("second")
    heard = await record_until_quiet(recording, buffer)

    freqs = frame_frequencies(heard, recording.rate, HOP_S)
    for item, freq in (("first", 440), ("second", 1000)):
        played = buffer.played_samples(item) / REALTIME_RATE
        assert seconds_of(freqs, freq) == pytest.approx(played, abs=BLOCK_S)
    assert buffer.played_samples("first") == int(0.5 * REALTIME_RATE)
    assert buffer.played_samples("second") == int(0.8 * REALTIME_RATE)


async def test_a_speaker_that_is_not_there_is_reported_and_retried(audio_rig: AudioRig) -> None:
    cfg = AudioConfig(output_device="HDMI", reopen_backoff_s=0.2, reopen_backoff_max_s=0.4)
    states: list[tuple[bool, str]] = []
    playback = Playback(cfg, JitterBuffer(cfg), lambda up, why: states.append((up, why)))
    playback.start()
    try:
        await wait_until(lambda: playback.stats.reopen_attempts >= 2, 30, "two more attempts")
    finally:
        playback.stop()
        await playback.wait_closed()
    assert len(states) == 1 and states[0][0] is False
    assert "no output device matches 'HDMI'" in states[0][1]
