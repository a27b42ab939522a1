"""Signal plumbing between the sound devices and the rest of kioskd: channel mixing, resampling, levels.

Everything that crosses a module boundary is mono int16 PCM at a fixed rate: 16 kHz for the wake-word
detector, 24 kHz for the realtime uplink and for reply audio. Devices run at whatever rate and channel count
they like; this module converts. Resampling is soxr's streaming resampler, so block boundaries leave no
clicks and no filter is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

WAKE_RATE = 16_000
REALTIME_RATE = 24_000
INT16_FULL_SCALE = 32768.0
# What dbfs() reports for digital silence: far below any real microphone's noise floor, but finite so it
# can be compared and logged.
SILENCE_DBFS = -120.0

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


def to_float(pcm: npt.NDArray[Any]) -> FloatArray:
    """Integer PCM (16/24-in-32/32-bit signed, 8-bit unsigned) or float as float32 in [-1, 1)."""
    if pcm.dtype == np.int16:
        return np.asarray(pcm, dtype=np.float32) / np.float32(INT16_FULL_SCALE)
    if pcm.dtype == np.int32:
        return np.asarray(pcm / 2147483648.0, dtype=np.float32)
    if pcm.dtype == np.uint8:  # 8-bit WAV is unsigned with its midpoint at 128
        return (np.asarray(pcm, dtype=np.float32) - np.float32(128.0)) / np.float32(128.0)
    return np.asarray(pcm, dtype=np.float32)


def to_int16(signal: npt.NDArray[Any]) -> Int16Array:
    """float in [-1, 1) as int16, rounded and clipped (never wrapped)."""
    scaled = np.rint(np.asarray(signal, dtype=np.float32) * np.float32(INT16_FULL_SCALE))
    return np.asarray(np.clip(scaled, -32768, 32767), dtype=np.int16)


def mix_channels(frames: npt.NDArray[Any], use_channels: Sequence[int]) -> FloatArray:
    """Mono float32 from a (frames, channels) block: the mean of the chosen channels.

    A mic array usually delivers several raw capsules, a beamformed channel, or a loopback of the speaker on
    separate channels; ``use_channels`` says which of them carry the voice. A 1-D block is already mono.
    """
    data = to_float(frames)
    if data.ndim == 1:
        return data
    if len(use_channels) == 1:
        return np.ascontiguousarray(data[:, use_channels[0]])
    return np.asarray(data[:, list(use_channels)].mean(axis=1), dtype=np.float32)


def dbfs(pcm: npt.NDArray[Any]) -> float:
    """RMS level relative to full scale (a full-scale square wave is 0 dBFS); SILENCE_DBFS for silence."""
    if pcm.size == 0:
        return SILENCE_DBFS
    data = to_float(pcm).astype(np.float64)
    rms = math.sqrt(float(np.mean(data * data)))
    if rms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms))


def peak_dbfs(pcm: npt.NDArray[Any]) -> float:
    """Peak level relative to full scale; SILENCE_DBFS for silence."""
    if pcm.size == 0:
        return SILENCE_DBFS
    peak = float(np.max(np.abs(to_float(pcm))))
    return SILENCE_DBFS if peak <= 0.0 else max(SILENCE_DBFS, 20.0 * math.log10(peak))


def gain_from_db(db: float) -> float:
    return float(10.0 ** (db / 20.0))


class Resampler:
    """A streaming mono resampler (soxr) for one continuous signal; a pass-through when the rates match."""

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, signal: FloatArray, *, last: bool = False) -> FloatArray:
        """Resample the next piece of the signal; ``last`` flushes the filter's tail."""
        if self._stream is None:
            return signal
        out: FloatArray = self._stream.resample_chunk(np.ascontiguousarray(signal, dtype=np.float32), last=last)
        if last:
            self.reset()
        return out

    def reset(self) -> None:
        """Forget the filter state: the next sample starts a new signal."""
        if self._stream is not None:
            self._stream.clear()


def resample(signal: FloatArray, in_rate: int, out_rate: int) -> FloatArray:
    """Resample a whole clip at once (sounds loaded from files, test material)."""
    if in_rate == out_rate:
        return signal
    out: FloatArray = soxr.resample(np.ascontiguousarray(signal, dtype=np.float32), in_rate, out_rate)
    return out


@dataclass(frozen=True, slots=True)
class ConvertedBlock:
    """One device block as the rest of kioskd wants it, with positions on the shared timelines."""

    pcm16k: Int16Array
    pcm24k: Int16Array
    end16k: int
    end24k: int


class CaptureConverter:
    """Device blocks in, mono 16 kHz and 24 kHz int16 out, with running sample counts.

    ``end16k`` counts every 16 kHz sample produced so far: the wake detector reports where a wake word ended
    on this timeline, and the pre-roll ring (24 kHz, ``end24k``) is cut at the same moment. Both counts keep
    running across device reopens so positions never repeat.
    """

    def __init__(self, device_rate: int, use_channels: Sequence[int]) -> None:
        self.use_channels = list(use_channels)
        self.device_rate = device_rate
        self._to16k = Resampler(device_rate, WAKE_RATE)
        self._to24k = Resampler(device_rate, REALTIME_RATE)
        self.end16k = 0
        self.end24k = 0

    def set_device_rate(self, device_rate: int) -> None:
        """A reopened device may run at another rate: start new filters, keep the timelines."""
        if device_rate != self.device_rate:
            self.device_rate = device_rate
            self._to16k = Resampler(device_rate, WAKE_RATE)
            self._to24k = Resampler(device_rate, REALTIME_RATE)

    def convert(self, frames: npt.NDArray[Any]) -> ConvertedBlock:
        mono = mix_channels(frames, self.use_channels)
        pcm16k = to_int16(self._to16k.process(mono))
        pcm24k = to_int16(self._to24k.process(mono))
        self.end16k += len(pcm16k)
        self.end24k += len(pcm24k)
        return ConvertedBlock(pcm16k, pcm24k, self.end16k, self.end24k)
