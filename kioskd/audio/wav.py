"""WAV files in and out: earcon overrides, the demo's microphone and speaker, ``kioskd wake-test``.

Reading is scipy's ``wavfile`` (PCM 8/16/24/32-bit, float, WAVE_FORMAT_EXTENSIBLE, any rate and channel
count); every way a file can be wrong becomes one :class:`WavError` whose message names the file and the
problem, so callers can print it instead of a traceback.
"""

from __future__ import annotations

import re
import struct
import warnings
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kioskd.audio.dsp import FloatArray, Int16Array, mix_channels, resample, to_float

# A header whose data size is this large was written by a program streaming to a pipe (arecord, espeak
# --stdout): the real length is "until the end of the file", not a sign of truncation.
_STREAMED_SIZE = 0x7FFF0000
_EXPECTED_RE = re.compile(r"expected (\d+) bytes")
# Rates a WAV we are given can sensibly have; a header outside them is corrupt (and would cost gigabytes to resample).
MIN_RATE, MAX_RATE = 1_000, 384_000


class WavError(ValueError):
    """A WAV file that cannot be used; the message is meant for the operator."""


@dataclass(frozen=True, slots=True)
class WavClip:
    """A decoded file: ``frames`` is float32, shape (n,) or (n, channels)."""

    rate: int
    frames: FloatArray

    @property
    def channels(self) -> int:
        return 1 if self.frames.ndim == 1 else int(self.frames.shape[1])

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.rate


def read_wav(path: Path) -> WavClip:
    """Decode ``path`` or raise :class:`WavError` saying what is wrong with it."""
    # Imported here: SciPy costs the daemon ~25 MB resident, and it reads WAV files only when configured to.
    from scipy.io import wavfile  # type: ignore[import-untyped, unused-ignore]

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rate, data = wavfile.read(path, mmap=False)
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a directory, not a WAV file") from None
    except PermissionError:
        raise WavError(f"{path}: permission denied") from None
    except (ValueError, struct.error, EOFError, OverflowError, MemoryError) as exc:
        detail = str(exc) or type(exc).__name__
        raise WavError(f"{path}: not a readable WAV file ({detail})") from None
    except OSError as exc:
        raise WavError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for warning in caught:
        text = str(warning.message)
        if "Reached EOF prematurely" in text:
            match = _EXPECTED_RE.search(text)
            if not match or int(match.group(1)) < _STREAMED_SIZE:
                raise WavError(f"{path}: truncated WAV file (the data ends before the header says it does)")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WavError(f"{path}: sample rate {rate} Hz is not an audio rate ({MIN_RATE} to {MAX_RATE} Hz)")
    if data.ndim not in (1, 2) or data.size == 0:
        raise WavError(f"{path}: contains no audio")
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise WavError(f"{path}: contains samples that are not numbers (NaN or infinity)")
    return WavClip(int(rate), to_float(data))


def read_wav_mono(path: Path, rate: int) -> FloatArray:
    """``path`` as mono float32 at ``rate``: all channels averaged, resampled once."""
    clip = read_wav(path)
    mono = mix_channels(clip.frames, list(range(clip.channels)))
    return resample(mono, clip.rate, rate)


class WavWriter:
    """Mono int16 WAV written block by block (the demo's speaker, test recordings)."""

    def __init__(self, path: Path, rate: int, channels: int = 1) -> None:
        self.path = path
        self._file = wave.open(str(path), "wb")  # noqa: SIM115 -- closed in close()
        self._file.setnchannels(channels)
        self._file.setsampwidth(2)
        self._file.setframerate(rate)
        self.frames_written = 0

    def write(self, pcm: Int16Array) -> None:
        self._file.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
        self.frames_written += len(pcm)

    def close(self) -> None:
        self._file.close()


def write_wav(path: Path, pcm: Int16Array, rate: int) -> None:
    """Write a whole int16 clip; (n,) for mono, (n, channels) otherwise."""
    channels = 1 if pcm.ndim == 1 else int(pcm.shape[1])
    writer = WavWriter(path, rate, channels)
    try:
        writer.write(pcm)
    finally:
        writer.close()
