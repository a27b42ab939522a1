"""Wake words spoken into the rig's microphone, heard through ALSA by the running capture + wake pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.capture import Capture, CaptureBlock
from kioskd.audio.dsp import WAKE_RATE, to_int16
from kioskd.audio.wav import write_wav
from kioskd.config import AudioConfig, WakeConfig
from kioskd.wake import WakeDetector, WakeEvent
from tests.audio.signals import load_mono, locate, speech_end, wait_until
from tests.conftest import Speak
from tests.rig import ALSA_DEVICE, AudioRig

pytestmark = [pytest.mark.rig, pytest.mark.asyncio]

VOICES = ["en-us", "en-gb", "en-us-nyc", "en-gb-scotland"]
GAP_S = 2.2  # longer than the 2 s refractory period (less the detection lag), so each utterance may wake
TOLERANCE = int(0.100 * WAKE_RATE)


def utterances(speak: Speak, directory: Path) -> tuple[Path, list[int], np.ndarray]:
    """One WAV with "hey jarvis" in each voice, GAP_S apart; the 16 kHz offsets where each phrase ends."""
    parts = [np.zeros(int(0.5 * WAKE_RATE), dtype=np.float32)]
    ends = []
    for voice in VOICES:
        speech = load_mono(speak("hey jarvis", voice=voice), WAKE_RATE) * np.float32(0.6)
        offset = sum(len(p) for p in parts)
        ends.append(offset + speech_end(speech))
        parts += [speech, np.zeros(int(GAP_S * WAKE_RATE), dtype=np.float32)]
    signal = np.concatenate(parts)
    path = directory / "hey-jarvis-voices.wav"
    write_wav(path, to_int16(signal), WAKE_RATE)
    return path, ends, signal


async def test_hey_jarvis_in_several_voices_wakes_once_per_utterance_where_the_phrase_ends(
    audio_rig: AudioRig, speak: Speak, tmp_path: Path
) -> None:
    wav, ends, signal = utterances(speak, tmp_path)
    loop = asyncio.get_running_loop()
    wakes: list[WakeEvent] = []
    captured: list[CaptureBlock] = []
    detector = await WakeDetector.create(WakeConfig(), wakes.append)
    flowing = asyncio.Event()

    def on_block(block: CaptureBlock) -> None:
        captured.append(block)
        detector.feed(block.pcm16k, block.end16k)

    capture = Capture(AudioConfig(input_device=ALSA_DEVICE), on_block,
                      lambda up, _reason: flowing.set() if up else None, loop=loop)
    task = loop.create_task(capture.run())
    try:
        await asyncio.wait_for(flowing.wait(), 20)
        await asyncio.to_thread(audio_rig.play_and_wait, wav)
        # Keep listening for another 1.5 s of captured audio: a second wake per utterance would show here.
        after = len(captured) + int(1.5 * 1000 / capture.cfg.block_ms)
        await wait_until(lambda: len(captured) >= after, 20, "more microphone audio")
        await detector.drain()
    finally:
        capture.stop()
        await task
        detector.close()

    heard = np.concatenate([b.pcm16k for b in captured]).astype(np.float32) / 32768
    start = captured[0].end16k - len(captured[0].pcm16k)
    offset = start + locate(heard, signal)  # where the WAV begins on the capture's timeline
    assert capture.stats.drops == 0
    assert [w.model for w in wakes] == ["hey_jarvis"] * len(VOICES), wakes
    for voice, wake, end in zip(VOICES, wakes, ends, strict=True):
        error_ms = (wake.end16k - (offset + end)) * 1000 / WAKE_RATE
        assert abs(wake.end16k - (offset + end)) <= TOLERANCE, f"{voice}: wake end off by {error_ms:.0f} ms"
        assert wake.score >= WakeConfig().threshold
