"""The realtime session object: its defaults on ``session.created`` and how ``session.update`` changes it.

Kept as the plain JSON the service sends (realtime-protocol.md §3.2, §3.8), so ``session.updated`` can echo
the full effective configuration exactly.
"""

from __future__ import annotations

from typing import Any

from kioskd.sim import schema

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, friendly voice assistant. Speak clearly and keep your answers short. "
    "If you do not know something, say so."
)


def session_cap_reason(cap_s: float) -> str:
    """The close reason at the session's maximum duration (§5.1)."""
    return f"Your session hit the maximum duration of {cap_s / 60:g} minutes."


def default_session(session_id: str, model: str, expires_at: int) -> dict[str, Any]:
    """``session.created``'s session, field for field as the captured one in §3.8."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": schema.ServerVad(type="server_vad").model_dump(),
            },
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def apply_update(current: dict[str, Any], params: schema.SessionParams) -> dict[str, Any]:
    """The session after an accepted update: fields present replace, ``null`` clears, absent ones stay."""
    new = {**current}
    for name in params.model_fields_set:
        value = getattr(params, name)
        if name in ("type", "model", "reasoning", "parallel_tool_calls"):
            continue
        if name == "audio":
            if value is not None:
                new["audio"] = _merged_audio(current["audio"], value)
        elif name == "instructions":
            new["instructions"] = value or ""
        elif name == "tools":
            new["tools"] = [t.model_dump(exclude_unset=True) for t in value or []]
        else:
            new[name] = value.model_dump() if hasattr(value, "model_dump") else value
    return new


def _merged_audio(current: dict[str, Any], audio: schema.AudioConfig) -> dict[str, Any]:
    merged = {"input": dict(current["input"]), "output": dict(current["output"])}
    if audio.input is not None:
        target = merged["input"]
        for name in audio.input.model_fields_set:
            value = getattr(audio.input, name)
            if value is None:
                target[name] = None
            elif name == "transcription":
                given = value.model_dump(exclude_unset=True)
                target[name] = {"model": value.model, "language": value.language, "prompt": value.prompt, **given}
            elif name == "noise_reduction":
                target[name] = value.model_dump(exclude_none=True)
            else:  # format, turn_detection: a whole object with its defaults filled in
                target[name] = value.model_dump()
    if audio.output is not None:
        target = merged["output"]
        for name in audio.output.model_fields_set:
            value = getattr(audio.output, name)
            if value is not None:  # voice, speed and format cannot be cleared
                target[name] = value.model_dump() if name == "format" else value
    return merged
