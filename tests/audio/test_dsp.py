"""Channel mixing, streaming resampling and levels: what the rest of kioskd relies on from the audio path."""

from __future__ import annotations

import numpy as np
import pytest

from kioskd.audio.dsp import (
    SILENCE_DBFS,
    CaptureConverter,
    Resampler,
    dbfs,
    mix_channels,
    peak_dbfs,
    resample,
    to_float,
    to_int16,
)


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_levels_in_dbfs() -> None:
    assert dbfs(tone(1000, 1.0, 16000, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert dbfs(to_int16(tone(1000, 1.0, 16000, amplitude=0.1))) == pytest.approx(-23.01, abs=0.02)
    assert peak_dbfs(tone(1000, 1.0, 16000, amplitude=0.5)) == pytest.approx(-6.02, abs=0.01)
    assert dbfs(np.zeros(100, dtype=np.int16)) == SILENCE_DBFS
    assert dbfs(np.zeros(0, dtype=np.int16)) == SILENCE_DBFS


def test_int16_conversion_rounds_and_clips_instead_of_wrapping() -> None:
    pcm = to_int16(np.array([0.0, 0.5, -1.0, 1.5, -2.0], dtype=np.float32))
    assert pcm.tolist() == [0, 16384, -32768, 32767, -32768]
    assert to_float(np.array([-32768, 16384], dtype=np.int16)).tolist() == [-1.0, 0.5]
    assert to_float(np.array([128, 0], dtype=np.uint8)).tolist() == [0.0, -1.0]


def test_mix_picks_one_channel_or_averages_several() -> None:
    frames = np.zeros((480, 4), dtype=np.int16)
    frames[:, 2] = 10000
    frames[:, 0] = 2000
    assert np.all(mix_channels(frames, [2]) == pytest.approx(10000 / 32768))
    assert np.all(mix_channels(frames, [0, 2]) == pytest.approx(6000 / 32768))
    assert np.all(mix_channels(frames, [1, 3]) == 0)


@pytest.mark.parametrize(("rate_in", "rate_out"), [(44100, 16000), (48000, 24000), (24000, 44100), (16000, 16000)])
def test_streaming_resampler_matches_whole_clip_resampling(rate_in: int, rate_out: int) -> None:
    signal = tone(440, 1.0, rate_in) + tone(3000, 1.0, rate_in, 0.2)
    stream = Resampler(rate_in, rate_out)
    block = rate_in // 50
    pieces = [stream.process(signal[i : i + block]) for i in range(0, len(signal), block)]
    pieces.append(stream.process(np.zeros(0, dtype=np.float32), last=True))
    streamed = np.concatenate(pieces)
    whole = resample(signal, rate_in, rate_out)
    assert len(streamed) == len(whole) == rate_out
    # Block boundaries leave no trace: the streamed signal is the one-shot signal.
    assert np.max(np.abs(streamed - whole)) < 1e-3


def test_converter_timelines_count_samples_and_mean_the_same_instants() -> None:
    converter = CaptureConverter(44100, [0])
    signal = np.zeros(2 * 44100, dtype=np.float32)
    signal[44100:] = tone(440, 1.0, 44100)  # sound starts at exactly 1.000 s
    frames = to_int16(signal)[:, None]
    blocks = [converter.convert(frames[i : i + 882]) for i in range(0, len(frames), 882)]
    assert blocks[-1].end16k == sum(len(b.pcm16k) for b in blocks)
    assert blocks[-1].end24k == sum(len(b.pcm24k) for b in blocks)
    assert all(b.pcm16k.dtype == np.int16 and b.pcm24k.dtype == np.int16 for b in blocks)
    # The resamplers hold back their last few ms, but a sample position means the same moment on both
    # timelines: the onset is at 16000 on one and 24000 on the other (so end24k = end16k * 3 / 2 maps).
    pcm16k = np.concatenate([b.pcm16k for b in blocks])
    pcm24k = np.concatenate([b.pcm24k for b in blocks])
    assert np.flatnonzero(np.abs(pcm16k) > 1000)[0] == pytest.approx(16000, abs=16)
    assert np.flatnonzero(np.abs(pcm24k) > 1000)[0] == pytest.approx(24000, abs=24)
    assert blocks[-1].end16k > 32000 - 16 * 25 and blocks[-1].end24k > 48000 - 24 * 25
    # And the level survives the conversion.
    assert dbfs(pcm16k[20000:]) == pytest.approx(dbfs(frames[50000:]), abs=0.1)
