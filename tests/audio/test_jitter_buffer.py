"""The jitter buffer as the output callback sees it: what comes out, when, and what is counted as played."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kioskd.audio.dsp import REALTIME_RATE
from kioskd.audio.earcons import Earcons
from kioskd.audio.playback import JitterBuffer
from kioskd.config import AudioConfig

BLOCK = 480  # 20 ms at 24 kHz


def ramp(n: int, start: int = 1) -> np.ndarray:
    """Distinct, recognisable samples: start, start+1, ..."""
    return (np.arange(n) % 30000 + start).astype(np.int16)


def pull(buffer: JitterBuffer, frames: int = BLOCK, channels: int | None = None) -> np.ndarray:
    out = np.full((frames,) if channels is None else (frames, channels), 12345, dtype=np.int16)
    buffer.pull(out)
    return out


def test_an_item_waits_for_the_jitter_target_then_plays_exactly_what_was_queued() -> None:
    buffer = JitterBuffer(jitter_target_ms=60)
    audio = ramp(24000)
    buffer.enqueue("a", audio[:960])  # 40 ms: below the 60 ms target
    assert np.all(pull(buffer) == 0)
    assert buffer.played_samples("a") == 0
    assert buffer.current_item() == "a"
    buffer.enqueue("a", audio[960:])
    out = np.concatenate([pull(buffer) for _ in range(50)])
    assert np.array_equal(out, audio)
    assert buffer.played_samples("a") == 24000
    assert buffer.played_ms("a") == 1000


def test_a_complete_item_plays_even_below_the_target_and_then_nothing_is_current() -> None:
    buffer = JitterBuffer(jitter_target_ms=500)
    buffer.enqueue("short", ramp(300))
    buffer.end_item("short")
    out = pull(buffer)
    assert np.array_equal(out[:300], ramp(300)) and np.all(out[300:] == 0)
    assert buffer.played_samples("short") == 300
    assert buffer.current_item() is None
    assert buffer.underruns == 0


def test_flush_silences_the_very_next_block_and_ignores_late_audio_for_that_item() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    buffer.enqueue("a", ramp(24000))
    pull(buffer)
    pull(buffer)
    buffer.flush()
    assert np.all(pull(buffer) == 0)
    assert buffer.played_samples("a") == 2 * BLOCK
    assert buffer.current_item() is None
    buffer.enqueue("a", ramp(2400))  # a delta still in flight when the visitor interrupted
    assert np.all(pull(buffer) == 0)
    assert buffer.discarded == 1
    buffer.enqueue("b", ramp(BLOCK, start=7))  # the next reply plays normally
    assert np.array_equal(pull(buffer), ramp(BLOCK, start=7))


def test_played_count_never_exceeds_what_was_received_and_follows_each_item() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    buffer.enqueue("a", ramp(700))
    buffer.end_item("a")
    buffer.enqueue("b", ramp(1000, start=5000))
    buffer.end_item("b")
    out = np.concatenate([pull(buffer) for _ in range(4)])
    assert np.array_equal(out[:1700], np.concatenate([ramp(700), ramp(1000, start=5000)]))
    assert buffer.played_samples("a") == 700
    assert buffer.played_samples("b") == 1000
    assert buffer.played_samples("never") == 0


def test_running_dry_mid_item_is_an_underrun_and_it_rebuffers() -> None:
    buffer = JitterBuffer(jitter_target_ms=40)
    buffer.enqueue("a", ramp(960))
    pull(buffer)
    pull(buffer)
    assert buffer.underruns == 0
    assert np.all(pull(buffer) == 0)
    assert buffer.underruns == 1
    assert buffer.current_item() == "a"  # still expecting the rest of the reply
    buffer.enqueue("a", ramp(480))  # below the target again: wait
    assert np.all(pull(buffer) == 0)
    buffer.enqueue("a", ramp(480, start=900))
    assert np.array_equal(pull(buffer), ramp(480))
    assert buffer.underruns == 1


def test_output_at_the_device_rate_counts_in_24khz_samples() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    buffer.set_output_rate(48000)
    t = np.arange(REALTIME_RATE) / REALTIME_RATE
    buffer.enqueue("a", (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    buffer.end_item("a")
    out = np.concatenate([pull(buffer, 960) for _ in range(51)])
    assert buffer.played_samples("a") == REALTIME_RATE
    loud = np.flatnonzero(np.abs(out) > 100)
    assert loud[-1] - loud[0] + 1 == pytest.approx(48000, abs=48)
    assert np.max(np.abs(out)) == pytest.approx(8000, rel=0.01)


def test_stereo_device_gets_the_same_signal_on_both_channels_and_the_hook_sees_it() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    seen: list[np.ndarray] = []
    buffer.on_output = lambda block: seen.append(block.copy())
    buffer.enqueue("a", ramp(BLOCK))
    out = pull(buffer, channels=2)
    assert np.array_equal(out[:, 0], ramp(BLOCK)) and np.array_equal(out[:, 1], ramp(BLOCK))
    assert np.array_equal(seen[0], ramp(BLOCK))


def test_earcons_mix_over_speech_and_survive_a_flush() -> None:
    buffer = JitterBuffer(AudioConfig(jitter_target_ms=0), earcons=Earcons(AudioConfig()))
    chime = np.full(BLOCK * 2, 1000, dtype=np.int16)
    buffer.enqueue("a", np.full(BLOCK * 4, 300, dtype=np.int16))
    buffer.play_earcon(chime)
    assert np.all(pull(buffer) == 1300)
    buffer.flush()
    assert np.all(pull(buffer) == 1000)
    assert np.all(pull(buffer) == 0)
    buffer.play_earcon("wake")
    assert np.any(pull(buffer) != 0)


def test_mixing_saturates_instead_of_wrapping() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    buffer.enqueue("a", np.full(BLOCK, 30000, dtype=np.int16))
    buffer.play_earcon(np.full(BLOCK, 30000, dtype=np.int16))
    assert np.all(pull(buffer) == 32767)


def test_overflow_is_counted_and_the_buffer_stays_bounded() -> None:
    buffer = JitterBuffer(jitter_target_ms=0, capacity_s=1.0)
    for _ in range(3):
        buffer.enqueue("a", ramp(REALTIME_RATE // 2))
    assert buffer.overflows == 1
    assert buffer.queued_ms == 1000


def test_reader_and_writer_on_two_threads_lose_nothing() -> None:
    buffer = JitterBuffer(jitter_target_ms=0)
    audio = ramp(REALTIME_RATE * 3)
    out: list[np.ndarray] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or buffer.current_item() is not None:
            out.append(pull(buffer))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(0, len(audio), 123):
        buffer.enqueue("a", audio[i : i + 123])
    buffer.end_item("a")
    done.set()
    thread.join(30)
    played = np.concatenate(out)
    assert buffer.played_samples("a") == len(audio)
    # Underruns may insert silence when the reader outruns the writer, but no sample is lost or reordered.
    assert np.array_equal(played[played != 0], audio)
