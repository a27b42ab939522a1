"""The microphone through ALSA: channel selection on a mic array, and surviving a device that goes away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kioskd.audio.capture import Capture, CaptureBlock
from kioskd.audio.dsp import REALTIME_RATE, dbfs, to_int16
from kioskd.audio.playback import JitterBuffer, Playback
from kioskd.audio.wav import write_wav
from kioskd.config import AudioConfig
from tests.audio.signals import load_mono, locate, tone, wait_until
from tests.conftest import Speak
from tests.rig import ALSA_DEVICE, RATE, AudioRig

pytestmark = [pytest.mark.rig, pytest.mark.asyncio]

FOUR = ["front-left", "front-right", "rear-left", "rear-right"]  # ALSA's order for 4 channels
QUICK = {"reopen_backoff_s": 0.2, "reopen_backoff_max_s": 0.4}


class Listener:
    """A running Capture and everything it reported."""

    def __init__(self, cfg: AudioConfig, **kwargs: Any) -> None:
        self.blocks: list[CaptureBlock] = []
        self.states: list[tuple[bool, str]] = []
        self.capture = Capture(cfg, self.blocks.append, lambda up, why: self.states.append((up, why)), **kwargs)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.capture.run())

    async def stop(self) -> None:
        self.capture.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)

    async def wait_state(self, up: bool, count: int = 1) -> None:
        await wait_until(lambda: [s for s, _ in self.states].count(up) >= count, 30,
                         f"the microphone to be reported {'up' if up else 'down'}")

    def audio(self, since: int = 0) -> np.ndarray:
        return np.concatenate([b.pcm24k for b in self.blocks[since:]]).astype(np.float32) / 32768

    async def more_blocks(self, seconds: float) -> None:
        target = len(self.blocks) + int(seconds * 1000 / self.capture.cfg.block_ms)
        await wait_until(lambda: len(self.blocks) >= target, 30, f"{seconds} s more of microphone audio")


async def test_a_four_channel_array_with_speech_on_channel_2_is_picked_and_mixed_as_configured(
    audio_rig: AudioRig, speak: Speak, tmp_path: Path
) -> None:
    sink = audio_rig.add_mic("rig_mic4", 4, FOUR)
    audio_rig.use_mic("rig_mic4")
    voice = load_mono(speak("hey jarvis, what time is it", voice="en-gb"), RATE) * np.float32(0.5)
    pad = np.zeros(int(0.3 * RATE), dtype=np.float32)
    frames = np.zeros((len(voice) + 2 * len(pad), 4), dtype=np.float32)
    frames[len(pad) : len(pad) + len(voice), 2] = voice
    wav = tmp_path / "array.wav"
    write_wav(wav, to_int16(frames), RATE)

    listeners = {
        name: Listener(AudioConfig(input_device=ALSA_DEVICE, input_channels=4, use_channels=use))
        for name, use in (("ch2", [2]), ("ch0", [0]), ("ch0+2", [0, 2]))
    }
    for listener in listeners.values():
        listener.start()
    try:
        for listener in listeners.values():
            await listener.wait_state(True)
        await asyncio.to_thread(audio_rig.play_and_wait, wav, sink=sink, channel_map=FOUR)
        for listener in listeners.values():
            await listener.more_blocks(0.5)
    finally:
        for listener in listeners.values():
            await listener.stop()

    ch2, ch0, mixed = (listeners[n].audio() for n in ("ch2", "ch0", "ch0+2"))
    reference = load_mono(speak("hey jarvis, what time is it", voice="en-gb"), REALTIME_RATE) * np.float32(0.5)
    energy = float(np.sum(reference.astype(np.float64) ** 2))
    # Channel 2 alone: the speech, at its level, sample for sample.
    assert float(np.sum(ch2.astype(np.float64) ** 2)) == pytest.approx(energy, rel=0.1)
    start = locate(ch2, reference)
    aligned = ch2[start : start + len(reference)]
    assert np.corrcoef(aligned, reference[: len(aligned)])[0, 1] > 0.95
    # Channel 0 carries nothing of it.
    assert dbfs(ch0) < -90
    # Channels 0 and 2 averaged: the same speech at half the amplitude (-6 dB, a quarter of the energy).
    assert float(np.sum(mixed.astype(np.float64) ** 2)) == pytest.approx(energy / 4, rel=0.1)


async def test_an_unplugged_microphone_is_reported_retried_and_recovered(audio_rig: AudioRig, tmp_path: Path) -> None:
    listener = Listener(AudioConfig(input_device=ALSA_DEVICE, **QUICK))
    listener.start()
    try:
        await listener.wait_state(True)
        audio_rig.unplug_mic()
        await listener.wait_state(False)
        assert listener.capture.stats.up is False
        # While it is gone, kioskd keeps trying (and failing) to reopen it, without crashing.
        await wait_until(lambda: listener.capture.stats.reopen_attempts >= 3, 30, "three reopen attempts")
        assert listener.states[-1][0] is False
        audio_rig.replug_mic()
        await listener.wait_state(True, count=2)
        # And it is the microphone again: a tone played into it is heard.
        since = len(listener.blocks)
        beep = tmp_path / "beep.wav"
        write_wav(beep, to_int16(tone(1000, 0.5, RATE, amplitude=0.25)), RATE)
        await asyncio.to_thread(audio_rig.play_and_wait, beep)
        await listener.more_blocks(0.3)
        assert np.max(np.abs(listener.audio(since))) > 0.2
    finally:
        await listener.stop()
    assert [up for up, _ in listener.states] == [True, False, True]
    assert listener.states[1][1]  # the loss came with a reason
    assert listener.task is not None and listener.task.exception() is None


async def test_a_microphone_that_stops_delivering_is_reopened(audio_rig: AudioRig) -> None:
    listener = Listener(AudioConfig(input_device=ALSA_DEVICE, **QUICK), stall_blocks=25, first_block_timeout_s=3.0)
    listener.start()
    try:
        await listener.wait_state(True)
        audio_rig.suspend_mic(True)  # no error, just no more audio
        await listener.wait_state(False)
        assert "no audio" in listener.states[-1][1]
        audio_rig.suspend_mic(False)
        await listener.wait_state(True, count=2)
        await listener.more_blocks(0.2)
    finally:
        await listener.stop()
    assert listener.capture.stats.reopen_attempts >= 1


async def test_a_sound_server_restart_is_survived_by_microphone_and_speaker(audio_rig: AudioRig) -> None:
    cfg = AudioConfig(input_device=ALSA_DEVICE, output_device=ALSA_DEVICE, jitter_target_ms=0, **QUICK)
    listener = Listener(cfg)
    speaker_states: list[tuple[bool, str]] = []
    buffer = JitterBuffer(cfg)
    playback = Playback(cfg, buffer, lambda up, why: speaker_states.append((up, why)))
    listener.start()
    playback.start()
    try:
        await listener.wait_state(True)
        await wait_until(lambda: [up for up, _ in speaker_states] == [True], 30, "the speaker to be up")
        audio_rig.restart()
        await listener.wait_state(False)
        await listener.wait_state(True, count=2)
        await wait_until(lambda: [up for up, _ in speaker_states] == [True, False, True], 30,
                         "the speaker to be lost and back")
        # Both work again: the speaker plays a queued reply, the microphone delivers.
        recording = await asyncio.to_thread(audio_rig.record_speaker)
        buffer.enqueue("after", to_int16(tone(500, 0.4, REALTIME_RATE, amplitude=0.3)))
        buffer.end_item("after")
        await wait_until(lambda: buffer.current_item() is None, 30, "the reply to play")
        await wait_until(lambda: np.max(np.abs(recording.snapshot()), initial=0) > 0.2, 30, "the reply to be heard")
        await asyncio.to_thread(recording.stop)
        await listener.more_blocks(0.2)
    finally:
        playback.stop()
        await playback.wait_closed()
        await listener.stop()
    assert listener.capture.stats.reopen_attempts >= 1
    assert playback.stats.reopen_attempts >= 1


async def test_a_microphone_that_is_not_there_is_reported_and_retried(audio_rig: AudioRig) -> None:
    listener = Listener(AudioConfig(input_device="ReSpeaker 4-Mic", **QUICK))
    listener.start()
    try:
        await listener.wait_state(False)
        await wait_until(lambda: listener.capture.stats.reopen_attempts >= 2, 30, "two more attempts")
    finally:
        await listener.stop()
    assert listener.states == [(False, listener.capture.stats.last_error)]
    assert "no input device matches 'ReSpeaker 4-Mic'" in listener.states[0][1]
    assert "pulse" in listener.states[0][1]  # and it says what there is instead
    assert listener.blocks == []


def keep_the_loop_busy(seconds: float) -> None:
    """Stand-in for a handler that hogs the event loop (not a wait: nothing is synchronised by it)."""
    time.sleep(seconds)


async def test_a_stalled_event_loop_costs_counted_drops_not_a_crash(audio_rig: AudioRig) -> None:
    listener = Listener(AudioConfig(input_device=ALSA_DEVICE, capture_queue_blocks=5))
    listener.start()
    try:
        await listener.wait_state(True)
        before = len(listener.blocks)
        keep_the_loop_busy(0.6)  # 30 blocks' time in which the device goes on delivering
        await listener.more_blocks(0.2)
    finally:
        await listener.stop()
    stats = listener.capture.stats
    assert stats.drops > 0
    # The hand-over queue's worth was kept from the stall; the rest was dropped and counted.
    assert len(listener.blocks) - before >= 5
    assert stats.blocks == len(listener.blocks)
    assert [up for up, _ in listener.states] == [True]
