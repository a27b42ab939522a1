"""The simulator's reply voice: the reply text as PCM16/24 kHz mono speech.

With espeak-ng installed the reply is real synthetic speech, so a listener (or a test recording the speaker)
hears words and a wake-word model or VAD downstream sees speech-like audio. Without it the simulator still
answers with a clearly audible signal: a voiced, syllable-paced harmonic tone whose length follows the text, so
timing, barge-in and truncation behave the same. Synthesis is cached per (text, speed): a kiosk conversation
repeats a handful of replies and espeak costs ~0.1 s of CPU per sentence.
"""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterable

import numpy as np

from kioskd.logs import get_logger

SAMPLE_RATE = 24_000
ESPEAK_WPM = 175  # espeak-ng's default speaking rate
_ESPEAK_TIMEOUT_S = 30.0
_TONE_MS_PER_CHAR = 62.0  # about the pace of espeak at its default rate
_TONE_PEAK = 0.35 * 32767

log = get_logger("sim.voice")


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def _to_24k(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or samples.size == 0:
        return samples.astype(np.int16)
    import soxr

    resampled = soxr.resample(samples.astype(np.float32), rate, SAMPLE_RATE)
    return np.asarray(np.clip(np.round(resampled), -32768, 32767).astype(np.int16))


def synthesize_espeak(text: str, speed: float = 1.0, *, voice: str = "en-us", binary: str = "espeak-ng") -> bytes:
    """Speak ``text`` with espeak-ng; raise ``RuntimeError`` with espeak's message if it fails.

    The text goes in on stdin so that nothing in it can be read as an option.
    """
    wpm = int(min(max(ESPEAK_WPM * speed, 80), 450))
    try:
        proc = subprocess.run(
            [binary, "--stdout", "-v", voice, "-s", str(wpm)],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=_ESPEAK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"espeak-ng could not run: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise RuntimeError(f"espeak-ng failed: {detail}")
    try:
        with wave.open(io.BytesIO(proc.stdout)) as wav:
            rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
            # espeak writes a streaming header with a bogus length: read whatever follows it.
            frames = wav.readframes(2**31 - 1)
    except (wave.Error, EOFError) as exc:
        raise RuntimeError(f"espeak-ng wrote audio that is not a WAV file: {exc}") from None
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit")
    samples = np.frombuffer(frames[: len(frames) - len(frames) % (2 * channels)], dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return _to_24k(samples, rate).astype("<i2").tobytes()


def synthesize_tones(text: str, speed: float = 1.0) -> bytes:
    """An audible stand-in for speech: a 160 Hz voiced buzz (harmonics to 1.6 kHz), pulsed at syllable rate."""
    seconds = max(0.5, len(text) * _TONE_MS_PER_CHAR / 1000.0 / max(speed, 0.1))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 160.0 * (1.0 + 0.06 * np.sin(2 * math.pi * 0.7 * t))  # a little intonation
    phase = 2 * math.pi * np.cumsum(f0) / SAMPLE_RATE
    wave_ = sum(np.sin(k * phase) / k for k in range(1, 11))
    syllables = 0.5 * (1.0 - np.cos(2 * math.pi * 4.0 * t))  # ~4 syllables per second
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.02)
    signal = wave_ / np.max(np.abs(wave_)) * syllables * fade * _TONE_PEAK
    return np.asarray(signal, dtype=np.float64).astype("<i2").tobytes()


class ReplyVoice:
    """Cached text → PCM16/24 kHz synthesis; espeak-ng when available, the tone signal otherwise.

    ``engine`` is ``"espeak-ng"`` or ``"tones"``; pass ``use_espeak=False`` to force the tones (a host without
    espeak-ng behaves the same way). Thread-safe, so ``prepare`` can warm the cache from a worker thread.
    """

    def __init__(self, *, use_espeak: bool | None = None, espeak_voice: str = "en-us") -> None:
        binary = espeak_path() if use_espeak is not False else None
        if use_espeak and binary is None:
            raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
        self._binary = binary
        self._espeak_voice = espeak_voice
        self._cache: dict[tuple[str, float], bytes] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> str:
        return "espeak-ng" if self._binary else "tones"

    def pcm(self, text: str, speed: float = 1.0) -> bytes:
        key = (text, round(speed, 3))
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        audio = self._synthesize(text, speed)
        with self._lock:
            self._cache[key] = audio
        return audio

    def prepare(self, texts: Iterable[str], speed: float = 1.0) -> None:
        """Synthesise ahead of time so that the first reply does not wait for espeak."""
        for text in texts:
            self.pcm(text, speed)

    def _synthesize(self, text: str, speed: float) -> bytes:
        if self._binary and text.strip():
            try:
                return synthesize_espeak(text, speed, voice=self._espeak_voice, binary=self._binary)
            except RuntimeError as exc:
                log.warning("reply voice: %s; answering with the tone signal instead", exc)
        return synthesize_tones(text, speed)
