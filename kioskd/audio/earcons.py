"""The daemon's short sounds: wake chime, end chime, error tone, budget-exhausted tone.

Each is generated here (so a fresh install makes sound with no files) and can be replaced by a WAV of any
rate and channel count through ``audio.wake_chime``, ``audio.end_chime``, ``audio.error_tone`` and
``audio.budget_tone``. ``audio.earcon_volume`` scales all of them. They are distinct on purpose: a visitor
should tell "I'm listening" (rising), "goodbye" (falling, lower), "something went wrong" (low, rough) and "no more
conversations today" (three slow low notes) apart without looking.

All sounds are mono int16 at 24 kHz, ready for :meth:`kioskd.audio.playback.JitterBuffer.play_earcon`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kioskd.audio.dsp import REALTIME_RATE, FloatArray, Int16Array, to_int16
from kioskd.audio.wav import WavError, read_wav_mono
from kioskd.config import AudioConfig

# Generated sounds peak here before earcon_volume: loud enough over a kiosk's hum, with room for the mix.
_PEAK = 0.7


class Earcon(enum.Enum):
    WAKE = "wake_chime"
    END = "end_chime"
    ERROR = "error_tone"
    BUDGET = "budget_tone"


_SHORT_NAMES = {"wake": Earcon.WAKE, "end": Earcon.END, "error": Earcon.ERROR, "budget": Earcon.BUDGET}


def lookup(name: Earcon | str) -> Earcon:
    """The earcon called ``name`` (short name or config key); KeyError names the valid ones."""
    if isinstance(name, Earcon):
        return name
    if name in _SHORT_NAMES:
        return _SHORT_NAMES[name]
    try:
        return Earcon(name)
    except ValueError:
        raise KeyError(f"no earcon {name!r}; there are {', '.join(_SHORT_NAMES)}") from None


def _note(freq: float, duration_s: float, rate: int, *, harmonics: Sequence[float] = (1.0,)) -> FloatArray:
    """A bell-like note: a few harmonics, 5 ms attack, exponential decay, 10 ms release (no clicks)."""
    n = int(duration_s * rate)
    t = np.arange(n, dtype=np.float64) / rate
    tone = np.zeros(n)
    for k, weight in enumerate(harmonics, start=1):
        tone += weight * np.sin(2 * np.pi * freq * k * t)
    tone /= sum(abs(w) for w in harmonics)
    envelope = np.exp(-t * 6.0 / duration_s)
    attack = min(n, int(0.005 * rate))
    release = min(n, int(0.010 * rate))
    envelope[:attack] *= np.linspace(0.0, 1.0, attack, endpoint=False)
    if release:
        envelope[n - release :] *= np.linspace(1.0, 0.0, release)
    return (tone * envelope).astype(np.float32)


def _sequence(notes: Sequence[tuple[float, float]], rate: int, *, gap_s: float = 0.02,
              harmonics: Sequence[float] = (1.0, 0.3)) -> FloatArray:
    parts: list[FloatArray] = []
    gap = np.zeros(int(gap_s * rate), dtype=np.float32)
    for freq, duration in notes:
        parts.append(_note(freq, duration, rate, harmonics=harmonics))
        parts.append(gap)
    signal = np.concatenate(parts[:-1])
    peak = float(np.max(np.abs(signal))) or 1.0
    return (signal / peak * _PEAK).astype(np.float32)


def generate(earcon: Earcon, rate: int = REALTIME_RATE) -> FloatArray:
    """The built-in sound for ``earcon`` as float32 at ``rate``, peak 0.7."""
    if earcon is Earcon.WAKE:  # a quick rising fifth: "yes?"
        return _sequence([(880.0, 0.09), (1318.5, 0.16)], rate)
    if earcon is Earcon.END:  # a falling fourth, lower: "bye"
        return _sequence([(1174.7, 0.09), (784.0, 0.2)], rate)
    if earcon is Earcon.ERROR:  # two low, buzzy notes a semitone apart
        return _sequence([(311.1, 0.14), (293.7, 0.22)], rate, gap_s=0.04, harmonics=(1.0, 0.5, 0.35, 0.25))
    return _sequence([(392.0, 0.2), (329.6, 0.2), (261.6, 0.35)], rate, gap_s=0.06)  # BUDGET: slow, descending


class Earcons:
    """The four sounds for one configuration: overrides loaded once, volume applied, as 24 kHz int16."""

    def __init__(self, cfg: AudioConfig) -> None:
        self.volume = cfg.earcon_volume
        self._sounds: dict[Earcon, Int16Array] = {}
        self.sources: dict[Earcon, str] = {}
        for earcon in Earcon:
            path: Path | None = getattr(cfg, earcon.value)
            if path is None:
                signal = generate(earcon)
                self.sources[earcon] = "built-in"
            else:
                try:
                    signal = read_wav_mono(path, REALTIME_RATE)
                except WavError as exc:
                    raise WavError(f"audio.{earcon.value}: {exc}") from None
                self.sources[earcon] = str(path)
            self._sounds[earcon] = to_int16(np.clip(signal * np.float32(self.volume), -1.0, 1.0))

    def __getitem__(self, earcon: Earcon | str) -> Int16Array:
        """By :class:`Earcon` or by name: ``"wake"``, ``"end"``, ``"error"``, ``"budget"`` (or the config key)."""
        return self._sounds[lookup(earcon)]

    @property
    def wake(self) -> Int16Array:
        return self._sounds[Earcon.WAKE]

    @property
    def end(self) -> Int16Array:
        return self._sounds[Earcon.END]

    @property
    def error(self) -> Int16Array:
        return self._sounds[Earcon.ERROR]

    @property
    def budget(self) -> Int16Array:
        return self._sounds[Earcon.BUDGET]
