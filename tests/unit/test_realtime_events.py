"""Client events match the official GA schema field for field; server frames are read tolerantly."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from openai.types.realtime import RealtimeClientEvent
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from pydantic import BaseModel, TypeAdapter

from kioskd.config import RealtimeConfig
from kioskd.realtime import events
from kioskd.realtime.events import ProtocolError, parse_server_event

CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)


def unknown_fields(model: Any, path: str = "") -> list[str]:
    """Every field the schema does not know, anywhere in a parsed model (the SDK's models accept extras)."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        found += [f"{path}.{name}" for name in (model.model_extra or {})]
        for name in type(model).model_fields:
            found += unknown_fields(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list | tuple):
        for i, value in enumerate(model):
            found += unknown_fields(value, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            found += unknown_fields(value, f"{path}.{key}")
    return found


def validate_client_event(event: dict[str, Any]) -> Any:
    """Parse as the SDK would after a JSON round trip, and insist nothing was left unrecognised."""
    parsed = CLIENT_EVENT.validate_python(json.loads(json.dumps(event)))
    assert parsed.type == event["type"]
    assert unknown_fields(parsed) == []
    return parsed


@pytest.mark.parametrize(
    "cfg",
    [
        RealtimeConfig(),
        RealtimeConfig(turn_detection="semantic_vad", semantic_eagerness="low", noise_reduction="off",
                       transcription_model="whisper-1", max_output_tokens="inf", voice="cedar"),
        RealtimeConfig(vad_threshold=0.7, prefix_padding_ms=200, silence_duration_ms=800,
                       noise_reduction="near_field", max_output_tokens=300),
    ],
    ids=["defaults", "semantic-vad", "tuned-server-vad"],
)
def test_session_update_is_a_valid_ga_realtime_session(cfg: RealtimeConfig) -> None:
    event = events.session_update(cfg)
    parsed = validate_client_event(event)
    assert isinstance(parsed.session, RealtimeSessionCreateRequest)
    session = event["session"]
    assert session["type"] == "realtime"
    assert session["instructions"] == cfg.instructions
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": cfg.voice}
    assert session["max_output_tokens"] == cfg.max_output_tokens
    assert session["truncation"]["type"] == "retention_ratio"
    turn = session["audio"]["input"]["turn_detection"]
    assert turn["type"] == cfg.turn_detection
    assert turn["interrupt_response"] is True and turn["create_response"] is True
    if cfg.turn_detection == "server_vad":
        assert (turn["threshold"], turn["prefix_padding_ms"], turn["silence_duration_ms"]) == (
            cfg.vad_threshold, cfg.prefix_padding_ms, cfg.silence_duration_ms)
    else:
        assert turn["eagerness"] == cfg.semantic_eagerness
    noise = session["audio"]["input"]["noise_reduction"]
    assert noise == (None if cfg.noise_reduction == "off" else {"type": cfg.noise_reduction})
    transcription = session["audio"]["input"]["transcription"]
    assert transcription == (None if cfg.transcription_model is None else {"model": cfg.transcription_model})


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


def test_session_update_never_carries_fields_gpt_realtime_15_rejects() -> None:
    event = events.session_update(RealtimeConfig(transcription_model="whisper-1"))
    banned = {"temperature", "reasoning", "parallel_tool_calls", "modalities", "voice_id",
              "input_audio_format", "output_audio_format", "max_response_output_tokens"}
    assert all_keys(event) & banned == set()
    assert "pcm16" not in json.dumps(event)


def test_instructions_open_the_session_and_are_sent_verbatim() -> None:
    text = "Static kiosk persona.\nNever changes between sessions."
    session = events.session_update(RealtimeConfig(instructions=text))["session"]
    assert list(session)[:2] == ["type", "instructions"]
    assert session["instructions"] == text
    assert events.session_update(RealtimeConfig(instructions=text)) == events.session_update(
        RealtimeConfig(instructions=text))


def test_audio_append_carries_the_exact_pcm_as_base64() -> None:
    pcm = bytes(range(256)) * 4
    event = events.input_audio_append(pcm)
    validate_client_event(event)
    assert base64.b64decode(event["audio"]) == pcm


def test_audio_append_refuses_half_samples_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        events.input_audio_append(b"\x00\x01\x02")


@pytest.mark.parametrize(
    "event",
    [
        events.truncate("item_abc", 1840),
        events.response_cancel(),
        events.response_cancel("resp_1"),
        events.response_create(),
        events.input_audio_commit(),
        events.input_audio_clear(),
        events.item_create_text("What time is it?"),
        events.item_create_text("The visitor left.", role="system"),
        events.item_delete("item_abc"),
    ],
    ids=lambda e: e["type"],
)
def test_every_other_client_event_is_valid_ga(event: dict[str, Any]) -> None:
    validate_client_event(event)


def test_truncate_names_the_first_content_part_and_refuses_nonsense() -> None:
    assert events.truncate("item_x", 0) == {
        "type": "conversation.item.truncate", "item_id": "item_x", "content_index": 0, "audio_end_ms": 0}
    with pytest.raises(ValueError, match="negative"):
        events.truncate("item_x", -1)
    with pytest.raises(ValueError, match="item"):
        events.truncate("", 10)


@pytest.mark.parametrize(
    ("legacy", "ga"),
    [
        ("response.audio.delta", "response.output_audio.delta"),
        ("response.audio.done", "response.output_audio.done"),
        ("response.audio_transcript.delta", "response.output_audio_transcript.delta"),
        ("response.audio_transcript.done", "response.output_audio_transcript.done"),
        ("response.text.delta", "response.output_text.delta"),
        ("response.text.done", "response.output_text.done"),
        ("conversation.item.created", "conversation.item.added"),
    ],
)
def test_legacy_event_names_are_read_as_their_ga_names(legacy: str, ga: str) -> None:
    event = parse_server_event(json.dumps({"type": legacy, "item_id": "item_1"}))
    assert event == {"type": ga, "item_id": "item_1"}


def test_unknown_types_and_fields_pass_through_untouched() -> None:
    frame = {"type": "response.brand_new_thing", "obfuscation": "z9A9", "nested": {"a": [1, 2]}}
    assert parse_server_event(json.dumps(frame)) == frame
    assert parse_server_event(json.dumps(frame).encode())["type"] == "response.brand_new_thing"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('"session.created"', "not an object"),
        ('{"event_id": "event_1"}', "no string 'type'"),
        ('{"type": 7}', "no string 'type'"),
        ('{"type": ""}', "no string 'type'"),
        (b"\xff\xfe\x00", "not UTF-8"),
        ("[" * 100_000, "not valid JSON"),
    ],
    ids=["truncated", "empty", "array", "string", "no-type", "numeric-type", "empty-type", "binary", "deep"],
)
def test_frames_that_are_not_events_raise_a_clear_protocol_error(frame: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_server_event(frame)


def test_protocol_error_messages_stay_short_for_huge_frames() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_server_event("x" * 1_000_000)
    assert len(str(caught.value)) < 200
