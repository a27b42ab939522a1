"""Measuring test audio: where speech ends, where a clip sits in a recording, how long a tone lasted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kioskd.audio.dsp import mix_channels, resample
from kioskd.audio.wav import read_wav

# Speech that is not the wake word: everyday kiosk sentences, some chosen to sound close to it
# ("Jarvis Cocker", "harvest", "Hey Travis").
OTHER_SENTENCES = (
    "The weather today is sunny with a light breeze from the west.",
    "Please remember to bring your ticket to the front desk.",
    "Our opening hours are from nine in the morning until six in the evening.",
    "The museum cafe serves coffee, tea and fresh sandwiches.",
    "Turn left after the elevator to find the restrooms.",
    "Children under twelve can enter for free on Sundays.",
    "Hello there, how can I help you find your way around?",
    "The next guided tour starts in fifteen minutes at the main entrance.",
    "Jars of honey are on sale in the gift shop.",
    "Hey, has anyone seen my umbrella? I think I left it by the door.",
    "Jarvis Cocker sang with Pulp in the nineties.",
    "Hey, harvest festival tickets are half price.",
    "Have you seen the new exhibition upstairs?",
    "Excuse me, where can I buy a map of the city?",
    "The train to the airport leaves every twenty minutes.",
    "Hey Travis, are you coming to lunch with us?",
)


def tone(freq: float, seconds: float, rate: int, amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def load_mono(path: Path, rate: int) -> np.ndarray:
    clip = read_wav(path)
    return resample(mix_channels(clip.frames, list(range(clip.channels))), clip.rate, rate)


def speech_end(signal: np.ndarray, below_peak_db: float = 45.0) -> int:
    """Index just after the last sample within ``below_peak_db`` of the clip's peak (espeak ends in silence)."""
    x = np.abs(signal.astype(np.float64))
    loud = np.flatnonzero(x > x.max() * 10 ** (-below_peak_db / 20))
    return int(loud[-1]) + 1


def locate(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Offset of ``needle`` in ``haystack`` by cross-correlation (FFT)."""
    a = haystack.astype(np.float64)
    b = needle.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    return int(np.argmax(corr[: len(a)]))


def frame_frequencies(signal: np.ndarray, rate: int, hop_s: float = 0.01, floor: float = 0.01) -> np.ndarray:
    """Dominant frequency of each ``hop_s`` frame (0 for frames quieter than ``floor`` RMS)."""
    hop = int(rate * hop_s)
    n = len(signal) // hop
    frames = signal[: n * hop].reshape(n, hop).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(hop), axis=1))
    freqs = np.fft.rfftfreq(hop, 1 / rate)[np.argmax(spectrum, axis=1)]
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return np.where(rms > floor, freqs, 0.0)


def seconds_of(freqs: np.ndarray, target: float, hop_s: float = 0.01, tolerance: float = 60.0) -> float:
    return float(np.count_nonzero(np.abs(freqs - target) < tolerance)) * hop_s


async def wait_until(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    """Wait for a state reached on another thread or process, with a generous deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
