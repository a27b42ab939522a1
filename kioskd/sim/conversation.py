"""The conversation as the simulator holds it: items, their content parts, and what each costs as prompt.

Audio stays attached to its part (user turns as committed, assistant replies as sent, cut by truncation), so
``conversation.item.retrieve`` can return it and usage can count it; the wire form leaves it out unless asked.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from kioskd.sim.usage import Segment, Tokens, assistant_audio_tokens, text_tokens, user_audio_tokens
from kioskd.sim.vad import BYTES_PER_MS


@dataclass
class PartState:
    type: str
    text: str | None = None
    transcript: str | None = None
    audio: bytearray | None = None
    image_url: str | None = None
    detail: str | None = None

    @property
    def audio_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS if self.audio else 0.0

    def wire(self, with_audio: bool) -> dict[str, Any]:
        if self.type in ("input_text", "output_text"):
            return {"type": self.type, "text": self.text}
        if self.type == "input_image":
            return {"type": self.type, "image_url": self.image_url, "detail": self.detail}
        out: dict[str, Any] = {"type": self.type}
        if with_audio:
            out["audio"] = base64.b64encode(bytes(self.audio or b"")).decode("ascii")
        out["transcript"] = self.transcript
        return out

    def tokens(self) -> Tokens:
        if self.type == "input_audio":
            return Tokens(audio=user_audio_tokens(self.audio_ms))
        if self.type == "output_audio":
            return Tokens(audio=assistant_audio_tokens(self.audio_ms))
        if self.type in ("input_text", "output_text"):
            return Tokens(text=text_tokens(self.text or ""))
        return Tokens()


@dataclass
class ItemState:
    id: str
    type: str
    role: str | None = None
    status: str = "completed"
    parts: list[PartState] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None

    @property
    def is_assistant_audio(self) -> bool:
        return (
            self.type == "message"
            and self.role == "assistant"
            and bool(self.parts)
            and self.parts[0].type == "output_audio"
            and self.parts[0].audio_ms > 0
        )

    def wire(self, with_audio: bool = False) -> dict[str, Any]:
        if self.type == "message":
            return {
                "id": self.id,
                "type": "message",
                "status": self.status,
                "role": self.role,
                "content": [p.wire(with_audio) for p in self.parts],
            }
        if self.type == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "status": self.status,
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.arguments,
            }
        return {"id": self.id, "type": self.type, "status": self.status, "call_id": self.call_id, "output": self.output}

    def segment(self) -> Segment:
        if self.type == "message":
            tokens = Tokens()
            for part in self.parts:
                tokens = tokens + part.tokens()
        elif self.type == "function_call":
            tokens = Tokens(text=text_tokens((self.name or "") + (self.arguments or "")))
        else:
            tokens = Tokens(text=text_tokens(self.output or ""))
        return Segment(f"item:{self.content_digest()}", tokens)

    def content_digest(self) -> str:
        """Names the item's content exactly, so that equal prompts share a cache entry and changed ones don't."""
        digest = hashlib.sha256(repr((self.type, self.role, self.call_id, self.name, self.arguments,
                                      self.output)).encode())
        for part in self.parts:
            digest.update(repr((part.type, part.text, part.image_url)).encode())
            digest.update(len(part.audio or b"").to_bytes(8, "little"))
            digest.update(part.audio or b"")
        return digest.hexdigest()
