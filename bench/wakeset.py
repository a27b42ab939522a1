"""Wake-word test material made at run time with espeak-ng: a positive set and hours-worth of negatives.

Positives are "hey jarvis" said by espeak-ng's English voices at three speeds, three levels and with or
without noise, each with quiet room tone before it (so a detector that skips silent frames has to recover
the context) and after it. Negatives are other sentences — some chosen to sound close ("Jarvis Cocker",
"hey Travis", "harvest") — in every voice and speed, separated by pauses, over room tone, with stretches of
noise, hum and two-voice babble. Everything is seeded: the same material on every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bench.common import SENTENCES, VOICES, FloatArray, at_level, espeak, room_tone

RATE = 16_000
SPEEDS = (140, 175, 210)
LEVELS_DBFS = (-18.0, -28.0, -38.0)
NOISES = ("quiet", "noisy")
ROOM_DBFS = -72.0  # a quiet kiosk microphone's floor: below the silence gate's -60 dBFS


@dataclass(frozen=True)
class Clip:
    label: str
    audio: FloatArray  # 16 kHz
    phrase_end: int  # sample where the wake phrase ends (positives), else -1


def _noise(kind: str, n: int, rng: np.random.Generator) -> FloatArray:
    if kind == "white":
        return np.asarray(rng.normal(0, 1, n), dtype=np.float32)
    if kind == "brown":
        walk = np.cumsum(rng.normal(0, 1, n))
        walk -= np.convolve(walk, np.ones(400) / 400, mode="same")
        return np.asarray(walk / (np.std(walk) or 1.0), dtype=np.float32)
    t = np.arange(n) / RATE
    return np.asarray(np.sin(2 * np.pi * 50 * t) + 0.4 * np.sin(2 * np.pi * 150 * t), dtype=np.float32)


def prefetch(texts: list[tuple[str, str, int]]) -> None:
    """Synthesise in parallel (espeak-ng runs as a process; the cache keeps the results)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda args: espeak(*args), texts))


def positives(seed: int = 11) -> list[Clip]:
    """"hey jarvis": 12 voices x 3 speeds x 3 levels x quiet/noisy (216 clips, about 15 minutes)."""
    prefetch([("hey jarvis", v, s) for v in VOICES for s in SPEEDS])
    rng = np.random.default_rng(seed)
    clips = []
    for voice in VOICES:
        for wpm in SPEEDS:
            phrase = espeak("hey jarvis", voice, wpm)
            for level in LEVELS_DBFS:
                for noise in NOISES:
                    spoken = at_level(phrase, level)
                    before, after = room_tone(2.5, ROOM_DBFS, rng), room_tone(1.5, ROOM_DBFS, rng)
                    audio = np.concatenate([before, spoken, after])
                    if noise == "noisy":  # white noise 15 dB under the speech, throughout
                        audio = audio + _noise("white", len(audio), rng) * np.float32(10 ** ((level - 15) / 20))
                    clips.append(Clip(f"{voice}/{wpm}wpm/{level:g}dBFS/{noise}", audio, len(before) + len(spoken)))
    return clips


def negatives(minutes: float = 30.0, seed: int = 12) -> Iterator[FloatArray]:
    """About ``minutes`` of non-wake audio, in pieces of a few seconds each."""
    prefetch([(text, v, s) for text in SENTENCES for v in VOICES for s in SPEEDS])
    rng = np.random.default_rng(seed)
    produced = 0
    target = int(minutes * 60 * RATE)
    while produced < target:
        for text in SENTENCES:
            for voice in VOICES:
                wpm = int(rng.choice(SPEEDS))
                speech = at_level(espeak(text, voice, wpm), float(rng.uniform(-36, -18)))
                pause = room_tone(float(rng.uniform(0.3, 2.0)), ROOM_DBFS, rng)
                piece = np.concatenate([speech, pause])
                roll = rng.random()
                if roll < 0.15:  # another voice over it: two people talking
                    other = at_level(espeak(str(rng.choice(SENTENCES)), str(rng.choice(VOICES)), 175), -30)
                    n = min(len(piece), len(other))
                    piece[:n] += other[:n]
                elif roll < 0.30:  # a stretch of noise after it
                    kind = str(rng.choice(["white", "brown", "hum"]))
                    noise = _noise(kind, int(rng.uniform(2, 6) * RATE), rng)
                    piece = np.concatenate([piece, noise * np.float32(10 ** (rng.uniform(-45, -25) / 20))])
                produced += len(piece)
                yield np.asarray(piece, dtype=np.float32)
                if produced >= target:
                    return
