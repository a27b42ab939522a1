"""When each part of a reply goes out, and how much of it fits the token limit.

The service generates faster than real time and sends audio in bursts of 100–500 ms (4 800–24 000 bytes,
realtime-protocol.md §3.6), with transcript words interleaved slightly ahead of the audio that speaks them.
``plan_reply`` turns a reply (text plus its audio) into such a schedule on the caller's clock; ``fit_reply``
cuts a reply to ``max_output_tokens`` the way a long answer ends up ``incomplete``.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass

from kioskd.sim.usage import assistant_audio_tokens, text_tokens
from kioskd.sim.vad import BYTES_PER_MS

CHUNK_MS_CHOICES = (100, 150, 200, 250, 300, 400, 500)
TEXT_MS_PER_CHAR = 60  # how long a text-only reply "takes" to generate, before the speed factor
MODEL_MAX_OUTPUT_TOKENS = 4096
_WORDS = re.compile(r"\S+\s*")


@dataclass
class Chunk:
    """What to send at ``due``: transcript (or text) words, then an audio piece (either may be empty)."""

    due: float
    audio: bytes
    text: str


def plan_reply(
    text: str, audio: bytes, *, start: float, speed: float, rng: random.Random
) -> tuple[deque[Chunk], float]:
    """The chunks of a reply and the time it is done; ``audio`` empty means a text-only reply."""
    words = _WORDS.findall(text)
    spans: list[tuple[float, float, bytes]] = []  # (start ms, end ms, audio)
    if audio:
        total_ms = len(audio) / BYTES_PER_MS
        offset = 0
        while offset < len(audio):
            piece = audio[offset : offset + rng.choice(CHUNK_MS_CHOICES) * BYTES_PER_MS]
            spans.append((offset / BYTES_PER_MS, (offset + len(piece)) / BYTES_PER_MS, piece))
            offset += len(piece)
    else:
        total_ms = float(len(text) * TEXT_MS_PER_CHAR)
        position = 0
        for word in words:
            spans.append((position * TEXT_MS_PER_CHAR, (position + len(word)) * TEXT_MS_PER_CHAR, b""))
            position += len(word)
    chunks: deque[Chunk] = deque()
    word_index, chars = 0, 0
    for number, (begin_ms, end_ms, piece) in enumerate(spans):
        last = number == len(spans) - 1
        said = ""
        while word_index < len(words):
            # A word goes out with the chunk in which it starts: the transcript runs a little ahead.
            if chars / max(len(text), 1) * total_ms >= end_ms and not last:
                break
            said += words[word_index]
            chars += len(words[word_index])
            word_index += 1
        chunks.append(Chunk(start + begin_ms / 1000 / speed, piece, said))
    if not chunks and text:
        chunks.append(Chunk(start, b"", text))
    return chunks, start + total_ms / 1000 / speed


def output_cost(text: str, audio: bytes) -> int:
    """Output tokens of a reply: audio 1 token / 50 ms plus its transcript 1 token / 4 characters."""
    return text_tokens(text) + assistant_audio_tokens(len(audio) / BYTES_PER_MS)


def fit_reply(text: str, audio: bytes, max_tokens: int | str) -> tuple[str, bytes, bool]:
    """The reply cut to ``max_output_tokens`` ("inf" is the model's 4096), and whether it had to be cut."""
    limit = MODEL_MAX_OUTPUT_TOKENS if max_tokens == "inf" else int(max_tokens)
    if output_cost(text, audio) <= limit:
        return text, audio, False
    fraction = limit / output_cost(text, audio)
    text = text[: int(len(text) * fraction)]
    audio = audio[: int(len(audio) * fraction) // 2 * 2]
    step = 10 * BYTES_PER_MS
    while output_cost(text, audio) > limit and (audio or text):
        if audio:
            audio = audio[: max(0, len(audio) - step)]
        else:
            text = text[:-4]
    return text, audio, True
