"""What a simulated session did, kept for tests, benchmarks and reports after the connection ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kioskd.sim.usage import Usage
from kioskd.sim.vad import BYTES_PER_MS


@dataclass
class Truncation:
    """One ``conversation.item.truncate`` and what became of it."""

    item_id: str
    audio_end_ms: int
    item_audio_ms: float | None  # the item's audio length before the cut; None for an unknown item
    accepted: bool
    error: str | None = None


@dataclass
class ResponseRecord:
    response_id: str
    status: str
    reason: str | None
    text: str  # what was sent of the transcript / text
    audio_ms: float  # how much reply audio was sent
    usage: Usage
    in_conversation: bool


@dataclass
class SessionRecord:
    """Everything one connection did: kept after it ends, for assertions and reports."""

    session_id: str
    model: str
    flavour: str
    auth: str
    expires_at: int
    client_events: list[dict[str, Any]] = field(default_factory=list)
    server_events: list[dict[str, Any]] = field(default_factory=list)
    input_pcm: bytearray = field(default_factory=bytearray)
    user_turns: list[bytes] = field(default_factory=list)
    truncations: list[Truncation] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    close_code: int | None = None
    close_reason: str = ""
    ended: bool = False

    @property
    def input_ms(self) -> float:
        return len(self.input_pcm) / BYTES_PER_MS

    def client_events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.client_events if e.get("type") == event_type]

    def server_events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.server_events if e.get("type") == event_type]
