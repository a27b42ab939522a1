"""The client events kioskd sends, and a tolerant reader for the events the server sends.

Builders return plain dicts shaped exactly like the GA protocol (realtime-protocol.md §3.3): one JSON object
per text frame, audio as base64 PCM16 at 24 kHz. They never add fields the GA schema lacks (``temperature``,
``reasoning``) nor beta-era names, because gpt-realtime-1.5 rejects a ``session.update`` wholesale when one
field is wrong, and a rejected update silently leaves the server's default persona in charge.

:func:`parse_server_event` accepts anything the server may add (unknown fields, unknown types) and renames
the beta spellings some deployments still emit to their GA names, so the protocol core only knows one
vocabulary.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from kioskd.config import RealtimeConfig

SAMPLE_RATE = 24_000
"""Hz of PCM16 both ways: the only PCM rate the GA protocol accepts."""
BYTES_PER_SAMPLE = 2
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": SAMPLE_RATE}
MAX_APPEND_BYTES = 15 * 1024 * 1024
"""The server's limit for one ``input_audio_buffer.append`` (after base64 the frame is a third larger)."""

# Dropping the oldest 20% of the conversation at once when the context overflows makes overflows rare,
# and every overflow invalidates the prompt cache; "auto" would drop a little at every turn.
TRUNCATION: dict[str, Any] = {"type": "retention_ratio", "retention_ratio": 0.8}

LEGACY_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}
"""Beta/preview event names → their GA names (realtime-protocol.md §3.5)."""


class ProtocolError(ValueError):
    """A frame from the server that is not a realtime event; the message says which rule it broke."""


def _turn_detection(cfg: RealtimeConfig) -> dict[str, Any]:
    # interrupt_response stays on: the server cancels its own response the moment the visitor speaks,
    # and the client only has to truncate what was not heard (realtime-protocol.md §4).
    if cfg.turn_detection == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": cfg.semantic_eagerness,
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": cfg.vad_threshold,
        "prefix_padding_ms": cfg.prefix_padding_ms,
        "silence_duration_ms": cfg.silence_duration_ms,
        "create_response": True,
        "interrupt_response": True,
    }


def session_update(cfg: RealtimeConfig) -> dict[str, Any]:
    """The one ``session.update`` sent after connecting: everything the kiosk's conversation needs.

    ``instructions`` is the operator's static text, sent as is: it opens every prompt, so keeping it
    byte-identical across sessions lets the server's prompt cache bill it at the cached rate.
    """
    noise = None if cfg.noise_reduction == "off" else {"type": cfg.noise_reduction}
    transcription = None if cfg.transcription_model is None else {"model": cfg.transcription_model}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": cfg.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": dict(PCM_FORMAT),
                    "noise_reduction": noise,
                    "transcription": transcription,
                    "turn_detection": _turn_detection(cfg),
                },
                "output": {"format": dict(PCM_FORMAT), "voice": cfg.voice},
            },
            "max_output_tokens": cfg.max_output_tokens,
            "truncation": dict(TRUNCATION),
        },
    }


def input_audio_append(pcm: bytes) -> dict[str, Any]:
    """Microphone audio (PCM16 little-endian mono 24 kHz) for the server's input buffer."""
    if len(pcm) % BYTES_PER_SAMPLE:
        raise ValueError(f"PCM16 audio must have an even number of bytes, got {len(pcm)}")
    if len(pcm) > MAX_APPEND_BYTES:
        raise ValueError(f"{len(pcm)} bytes of audio exceed the server's {MAX_APPEND_BYTES}-byte limit per append")
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}


def input_audio_commit() -> dict[str, Any]:
    """Turn the input buffer into a user item (only needed without server turn detection)."""
    return {"type": "input_audio_buffer.commit"}


def input_audio_clear() -> dict[str, Any]:
    """Discard audio the server has buffered but not yet committed."""
    return {"type": "input_audio_buffer.clear"}


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    """Tell the server the listener heard only the first ``audio_end_ms`` of an assistant item.

    The server then drops the unheard audio and its transcript, so the model's context holds only what
    was really said to the visitor.
    """
    if not item_id:
        raise ValueError("truncate needs the assistant item's id")
    if audio_end_ms < 0:
        raise ValueError(f"audio_end_ms must not be negative, got {audio_end_ms}")
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}


def response_create() -> dict[str, Any]:
    """Ask for a response now (bare: the session carries modalities, voice and instructions)."""
    return {"type": "response.create"}


def response_cancel(response_id: str | None = None) -> dict[str, Any]:
    """Stop the active response (or the named one); answered by ``response.done`` status ``cancelled``."""
    event: dict[str, Any] = {"type": "response.cancel"}
    if response_id:
        event["response_id"] = response_id
    return event


def item_create_text(text: str, role: Literal["user", "system"] = "user") -> dict[str, Any]:
    """Add a text message to the conversation (a typed question, or a system note)."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]},
    }


def item_delete(item_id: str) -> dict[str, Any]:
    """Remove an item, e.g. an assistant reply interrupted before any of it was heard."""
    return {"type": "conversation.item.delete", "item_id": item_id}


def parse_server_event(frame: str | bytes) -> dict[str, Any]:
    """One server frame → one event dict with a GA ``type``; :class:`ProtocolError` if it is not an event."""
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"a binary frame of {len(frame)} bytes is not UTF-8 JSON") from None
    try:
        event = json.loads(frame)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(f"frame is not valid JSON: {_preview(frame)}") from None
    if not isinstance(event, dict):
        raise ProtocolError(f"frame is JSON but not an object: {_preview(frame)}")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(f"event has no string 'type': {_preview(frame)}")
    if kind in LEGACY_ALIASES:
        event["type"] = LEGACY_ALIASES[kind]
    return event


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
