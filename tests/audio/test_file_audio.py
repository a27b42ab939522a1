"""The demo's microphone and speaker: WAV files standing in for devices, paced by the loop's clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.capture import CaptureBlock, FileCapture
from kioskd.audio.dsp import REALTIME_RATE, WAKE_RATE, dbfs, to_int16
from kioskd.audio.playback import FilePlayback, JitterBuffer
from kioskd.audio.wav import read_wav, write_wav
from kioskd.config import AudioConfig
from tests.audio.signals import frame_frequencies, seconds_of, tone, wait_until

pytestmark = pytest.mark.asyncio


async def capture_file(path: Path, cfg: AudioConfig, extra_s: float) -> tuple[list[CaptureBlock], float, float]:
    """Run a FileCapture until ``extra_s`` of audio past the end of the file; (blocks, start, file done)."""
    loop = asyncio.get_running_loop()
    blocks: list[CaptureBlock] = []
    states: list[bool] = []
    capture = FileCapture(cfg, blocks.append, lambda up, _why: states.append(up), path=path)
    start = loop.time()
    task = loop.create_task(capture.run())
    await asyncio.wait_for(capture.finished.wait(), 30)
    finished_at = loop.time()
    target = len(blocks) + int(extra_s * 1000 / cfg.block_ms)
    await wait_until(lambda: len(blocks) >= target, 30, "silence after the file")
    capture.stop()
    await asyncio.wait_for(task, 10)
    assert states == [True]
    return blocks, start, finished_at


async def test_a_stereo_48k_file_is_the_microphone_converted_and_in_real_time(tmp_path: Path) -> None:
    rate = 48000
    stereo = np.zeros((int(1.2 * rate), 2), dtype=np.float32)
    stereo[:, 0] = tone(440, 1.2, rate, amplitude=0.3)
    path = tmp_path / "mic.wav"
    write_wav(path, to_int16(stereo), rate)
    cfg = AudioConfig(input_channels=2, use_channels=[0])

    blocks, start, finished_at = await capture_file(path, cfg, extra_s=0.5)

    pcm16k = np.concatenate([b.pcm16k for b in blocks])
    pcm24k = np.concatenate([b.pcm24k for b in blocks])
    assert blocks[-1].end16k == len(pcm16k) and blocks[-1].end24k == len(pcm24k)
    freqs = frame_frequencies(pcm24k.astype(np.float32) / 32768, REALTIME_RATE)
    assert seconds_of(freqs, 440) == pytest.approx(1.2, abs=0.02)
    assert dbfs(pcm16k[1600:16000]) == pytest.approx(dbfs(stereo[:, 0]), abs=0.2)
    assert np.all(pcm16k[-WAKE_RATE // 4 :] == 0)  # then silence, as from a quiet room
    # Paced like a microphone: the file took (at least) its own length to arrive.
    assert finished_at - start >= 1.2 - cfg.block_ms / 1000


async def test_a_file_whose_channel_count_differs_from_the_config_is_mixed_whole(tmp_path: Path) -> None:
    rate = 16000
    path = tmp_path / "mono.wav"
    write_wav(path, to_int16(tone(300, 0.5, rate, amplitude=0.2)), rate)
    blocks, _, _ = await capture_file(path, AudioConfig(input_channels=4, use_channels=[3]), extra_s=0.1)
    pcm16k = np.concatenate([b.pcm16k for b in blocks])
    assert dbfs(pcm16k[800:7200]) == pytest.approx(dbfs(tone(300, 0.5, rate, amplitude=0.2)), abs=0.2)


async def test_file_playback_writes_what_the_speaker_would_have_played(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    path = tmp_path / "speaker.wav"
    cfg = AudioConfig(jitter_target_ms=60)
    buffer = JitterBuffer(cfg)
    playback = FilePlayback(cfg, buffer, path=path)
    start = loop.time()
    playback.start()
    reply = tone(880, 0.6, REALTIME_RATE, amplitude=0.25)
    buffer.enqueue("reply", to_int16(reply))
    buffer.end_item("reply")
    await wait_until(lambda: buffer.current_item() is None, 30, "the reply to be played")
    playback.stop()
    await playback.wait_closed()
    elapsed = loop.time() - start

    clip = read_wav(path)
    assert clip.rate == REALTIME_RATE and clip.channels == 1
    assert seconds_of(frame_frequencies(clip.frames, clip.rate), 880) == pytest.approx(0.6, abs=0.02)
    assert buffer.played_samples("reply") == len(reply)
    assert clip.duration_s >= 0.6
    assert clip.duration_s <= elapsed + cfg.block_ms / 1000  # never ahead of the clock
    assert elapsed >= 0.6 - cfg.block_ms / 1000


async def test_a_failing_block_handler_does_not_stop_the_microphone(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_wav(path, to_int16(tone(300, 0.3, 16000, amplitude=0.2)), 16000)
    calls: list[int] = []

    def broken_handler(block: CaptureBlock) -> None:
        calls.append(block.end16k)
        raise RuntimeError("a bug downstream")

    capture = FileCapture(AudioConfig(), broken_handler, path=path)
    task = asyncio.get_running_loop().create_task(capture.run())
    await asyncio.wait_for(capture.finished.wait(), 30)
    await wait_until(lambda: len(calls) >= 20, 30, "more blocks after the file")
    capture.stop()
    await asyncio.wait_for(task, 10)
    assert task.exception() is None
    assert calls == sorted(calls) and len(set(calls)) == len(calls)  # every block still came, in order
    assert capture.stats.up is True
