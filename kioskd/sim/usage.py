"""Token accounting the way the realtime service bills it (realtime-protocol.md §5.3–5.4).

* Every response is billed for its whole prompt: instructions plus the conversation so far, re-sent each turn.
* User audio costs one token per 100 ms, assistant audio one per 50 ms, text one per 4 characters.
* Output is the reply's audio (1 token / 50 ms) plus its transcript (1 token / 4 characters).
* Prompt caching: a prompt of at least 1024 tokens whose leading part was seen before gets that part billed as
  cached, in 128-token steps (Azure's rule). The cache is keyed by the content of each prompt segment
  (instructions text, each item's content), so a truncated or deleted item breaks the prefix from that point on,
  as it does on the service, and equal prompts in different sessions share it.

The wire shape of ``usage`` (``Usage.to_wire``) is exactly the one in the §3.8 ``response.done`` example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

USER_AUDIO_MS_PER_TOKEN = 100
ASSISTANT_AUDIO_MS_PER_TOKEN = 50
CHARS_PER_TOKEN = 4
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def user_audio_tokens(ms: float) -> int:
    return math.ceil(ms / USER_AUDIO_MS_PER_TOKEN)


def assistant_audio_tokens(ms: float) -> int:
    return math.ceil(ms / ASSISTANT_AUDIO_MS_PER_TOKEN)


@dataclass(frozen=True)
class Tokens:
    """A token count split by modality."""

    text: int = 0
    audio: int = 0
    image: int = 0

    @property
    def total(self) -> int:
        return self.text + self.audio + self.image

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.text + other.text, self.audio + other.audio, self.image + other.image)


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt: ``key`` names its content exactly (same key, same tokens)."""

    key: str
    tokens: Tokens


@dataclass(frozen=True)
class Usage:
    """What one response (or a sum of responses) is billed for; ``cached`` is part of ``input``."""

    input: Tokens = field(default_factory=Tokens)
    cached: Tokens = field(default_factory=Tokens)
    output: Tokens = field(default_factory=Tokens)

    @property
    def input_tokens(self) -> int:
        return self.input.total

    @property
    def cached_tokens(self) -> int:
        return self.cached.total

    @property
    def output_tokens(self) -> int:
        return self.output.total

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input + other.input, self.cached + other.cached, self.output + other.output)

    def to_wire(self) -> dict[str, Any]:
        return {
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_token_details": {
                "text_tokens": self.input.text,
                "audio_tokens": self.input.audio,
                "image_tokens": self.input.image,
                "cached_tokens": self.cached_tokens,
                "cached_tokens_details": {
                    "text_tokens": self.cached.text,
                    "audio_tokens": self.cached.audio,
                    "image_tokens": self.cached.image,
                },
            },
            "output_token_details": {"text_tokens": self.output.text, "audio_tokens": self.output.audio},
        }


def _take(tokens: Tokens, budget: int) -> Tokens:
    """The first ``budget`` tokens of a segment, attributed text → audio → image (segments hold one kind)."""
    text = min(tokens.text, budget)
    audio = min(tokens.audio, budget - text)
    image = min(tokens.image, budget - text - audio)
    return Tokens(text, audio, image)


class PromptCache:
    """Remembers prompt prefixes and says how much of a new prompt would be served from cache.

    One instance is shared by all sessions of a server, like the service's per-resource cache.
    """

    def __init__(self) -> None:
        self._prefixes: dict[int, int] = {}

    def cached_part(self, segments: Sequence[Segment]) -> Tokens:
        """The cached share of this prompt; also remembers the prompt for the next lookup."""
        chain: list[tuple[int, int]] = []  # (prefix hash, tokens up to and including this segment)
        running_hash = 0
        running_tokens = 0
        for segment in segments:
            running_hash = hash((running_hash, segment.key))
            running_tokens += segment.tokens.total
            chain.append((running_hash, running_tokens))
        seen = 0
        for prefix_hash, tokens in reversed(chain):
            if prefix_hash in self._prefixes:
                seen = tokens
                break
        for prefix_hash, tokens in chain:
            self._prefixes[prefix_hash] = tokens
        total = running_tokens
        if total < CACHE_MIN_TOKENS or seen < CACHE_MIN_TOKENS:
            return Tokens()
        budget = seen // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS
        cached = Tokens()
        for segment in segments:
            if budget <= 0:
                break
            part = _take(segment.tokens, budget)
            cached = cached + part
            budget -= part.total
        return cached
