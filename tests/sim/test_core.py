"""The protocol core, driven with a virtual clock and no sockets.

Every event the core emits in these tests is validated against the official ``openai`` models by the harness.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from kioskd.sim import Close, Faults, PromptCache, ReplyVoice, SimCore, SimOptions
from kioskd.sim.session import session_cap_reason
from tests.sim.conftest import MODEL, append_event, silence, speech, validate_server_event

WALL = 1_767_000_000.0
VOICE = ReplyVoice()
VOICES = "'alloy', 'ash', 'ballad', 'coral', 'echo', 'sage', 'shimmer', 'verse', 'marin', 'cedar'"


class Harness:
    """A core plus a virtual clock; ``send``/``advance``/``speak`` return the (validated) events emitted."""

    def __init__(self, cache: PromptCache | None = None, turn_silence_ms: int | None = 500, **options: Any) -> None:
        settings: dict[str, Any] = {"seed": 7, "speed": 4.0}
        settings.update(options)
        self.options = SimOptions(**settings)
        self.now = 0.0
        self.core = SimCore(
            self.options, model=MODEL, now=0.0, wall_now=WALL, voice=VOICE, prompt_cache=cache,
            faults=self.options.faults,
        )
        self.closes: list[Close] = []
        self.log: list[dict[str, Any]] = []
        self.created = self._take(self.core.start())[0]
        if turn_silence_ms is not None:  # kioskd's setting; the service default (200 ms) splits at a comma
            vad = {"type": "server_vad", "silence_duration_ms": turn_silence_ms}
            assert types(self.update(audio={"input": {"turn_detection": vad}})) == ["session.updated"]

    def _take(self, outputs: list[Any]) -> list[dict[str, Any]]:
        events = []
        for output in outputs:
            if isinstance(output, Close):
                self.closes.append(output)
            else:
                validate_server_event(output)
                events.append(output)
        self.log += events
        return events

    def send(self, event: dict[str, Any] | str) -> list[dict[str, Any]]:
        frame = event if isinstance(event, str) else json.dumps(event)
        return self._take(self.core.receive(frame, self.now))

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        target = self.now + seconds
        events = []
        while (deadline := self.core.next_deadline()) is not None and deadline <= target:
            self.now = max(self.now, deadline)
            events += self._take(self.core.poll(self.now))
        self.now = target
        return events + self._take(self.core.poll(target))

    def until(self, event_type: str, limit_s: float = 120.0) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        end = self.now + limit_s
        while self.now < end:
            deadline = self.core.next_deadline()
            assert deadline is not None
            events += self.advance(max(0.0, deadline - self.now))
            if any(e["type"] == event_type for e in events):
                return events
        raise AssertionError(f"no {event_type} within {limit_s} s")

    def wait(self, event_type: str, n: int = 1, limit_s: float = 120.0) -> dict[str, Any]:
        """The ``n``-th ``event_type`` of the session, advancing the clock until it has been emitted."""
        end = self.now + limit_s
        while len(of(self.log, event_type)) < n:
            deadline = self.core.next_deadline()
            assert deadline is not None and self.now < end, f"no {event_type} #{n} within {limit_s} s"
            self.advance(max(0.0, deadline - self.now))
        return of(self.log, event_type)[n - 1]

    def speak(self, pcm: bytes, chunk_ms: int = 20) -> list[dict[str, Any]]:
        """Stream ``pcm`` in real time (the clock advances with the audio)."""
        events: list[dict[str, Any]] = []
        step = chunk_ms * 48
        for i in range(0, len(pcm), step):
            events += self.advance(chunk_ms / 1000)
            events += self.send(append_event(pcm[i : i + step]))
        return events

    def update(self, **session: Any) -> list[dict[str, Any]]:
        return self.send({"type": "session.update", "session": {"type": "realtime", **session}})


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def only_error(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert types(events) == ["error"], types(events)
    error: dict[str, Any] = events[0]["error"]
    return error


def of(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == event_type]


QUESTION = speech("Hello, where is the information desk, please?")
TURN = silence(600) + QUESTION + silence(1200)


# --- session -------------------------------------------------------------------------------------------


def test_session_created_carries_the_documented_defaults() -> None:
    h = Harness()
    session = h.created["session"]
    assert session["id"].startswith("sess_")
    assert session["expires_at"] == int(WALL) + 1800
    assert {k: v for k, v in session.items() if k not in ("id", "expires_at", "instructions")} == {
        "type": "realtime",
        "object": "realtime.session",
        "model": MODEL,
        "output_modalities": ["audio"],
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
                    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


FULL_UPDATE: dict[str, Any] = {  # realtime-protocol.md §3.7, session.update
    "type": "realtime",
    "instructions": "You are a concise, friendly voice assistant. Answer in one or two sentences.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": {"type": "near_field"},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {
                "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
    },
    "tools": [{
        "type": "function", "name": "get_time", "description": "Return the current local time as HH:MM.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    }],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
}


def test_session_update_answers_with_the_full_effective_session() -> None:
    h = Harness()
    events = h.send({"type": "session.update", "event_id": "evt_client_0001", "session": FULL_UPDATE})
    assert types(events) == ["session.updated"]
    session = events[0]["session"]
    expected = {k: v for k, v in FULL_UPDATE.items() if k != "audio"}
    assert {k: session[k] for k in expected} == expected
    assert session["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en", "prompt": None}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["id"] == h.created["session"]["id"] and session["expires_at"] == h.created["session"]["expires_at"]
    assert session["tracing"] is None and session["prompt"] is None and session["include"] is None


def test_session_update_changes_only_what_it_names_and_null_clears() -> None:
    h = Harness()
    h.send({"type": "session.update", "session": FULL_UPDATE})
    session = h.update(instructions="Answer in German.")[0]["session"]
    assert session["instructions"] == "Answer in German."
    assert session["audio"]["output"]["voice"] == "marin"
    session = h.update(audio={"input": {"turn_detection": None, "transcription": None}})[0]["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["transcription"] is None
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    # With turn detection off, speech opens no turn.
    assert h.speak(TURN) == []


REJECTED = [
    ({}, "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"),
    ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "Unknown parameter: 'session.temperature'.",
     "session.temperature"),
    ({"type": "realtime", "modalities": ["audio", "text"]}, "unknown_parameter",
     "Unknown parameter: 'session.modalities'.", "session.modalities"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "invalid_value",
     "Invalid value: 16000. Supported values are: 24000.", "session.audio.input.format.rate"),
    ({"type": "realtime", "audio": {"output": {"voice": "nova"}}}, "invalid_value",
     f"Invalid value: 'nova'. Supported values are: {VOICES}.", "session.audio.output.voice"),
    ({"type": "realtime", "instructions": 5}, "invalid_type",
     "Invalid type for 'session.instructions': expected a string, but got an integer instead.",
     "session.instructions"),
    ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
     "decimal_above_max_value",
     "Invalid 'session.audio.input.turn_detection.threshold': decimal above maximum value. Expected a value <= 1.0, "
     "but got 1.5 instead.", "session.audio.input.turn_detection.threshold"),
    ({"type": "realtime", "max_output_tokens": 5000}, "integer_above_max_value",
     "Invalid 'session.max_output_tokens': integer above maximum value. Expected a value <= 4096, but got 5000 "
     "instead.", "session.max_output_tokens"),
    ({"type": "transcription"}, "invalid_parameter",
     "Passing a transcription session update event to a realtime session is not allowed.", "session.type"),
]


@pytest.mark.parametrize(("session", "code", "message", "param"), REJECTED)
def test_a_bad_session_update_is_rejected_whole_with_the_service_error(
    session: dict[str, Any], code: str, message: str, param: str
) -> None:
    h = Harness()
    before = h.core.session["instructions"]
    error = only_error(h.send({
        "type": "session.update", "event_id": "evt_42", "session": {**session, "instructions": "not applied"}
        if "instructions" not in session else session,
    }))
    assert error == {"type": "invalid_request_error", "code": code, "message": message, "param": param,
                     "event_id": "evt_42"}
    assert h.core.session["instructions"] == before


@pytest.mark.parametrize("field", [{"reasoning": {"effort": "low"}}, {"parallel_tool_calls": True}])
def test_reasoning_and_parallel_tool_calls_are_refused_for_gpt_realtime_1_5(field: dict[str, Any]) -> None:
    h = Harness()
    error = only_error(h.send({"type": "session.update", "event_id": "e1", "session": {"type": "realtime", **field}}))
    assert error["code"] == "invalid_value"
    assert error["param"] == f"session.{next(iter(field))}"
    assert error["event_id"] is None  # as observed on the service
    assert types(h.update(parallel_tool_calls=False)) == ["session.updated"]


def test_voice_cannot_change_once_assistant_audio_exists_and_the_whole_update_is_dropped() -> None:
    h = Harness()
    assert types(h.update(audio={"output": {"voice": "cedar"}})) == ["session.updated"]
    h.send({"type": "response.create"})
    h.until("response.done")
    error = only_error(h.update(instructions="new persona", audio={"output": {"voice": "marin"}}))
    assert error["code"] == "cannot_update_voice"
    assert error["message"] == "Cannot update a conversation's voice if assistant audio is present."
    assert h.core.session["instructions"] != "new persona"
    assert h.core.session["audio"]["output"]["voice"] == "cedar"
    assert h.update(instructions="new persona")[0]["session"]["instructions"] == "new persona"


# --- frames and the input buffer ------------------------------------------------------------------------


def test_frames_that_are_not_client_events_get_errors_and_the_session_goes_on() -> None:
    h = Harness()
    assert only_error(h.send("{not json"))["code"] == "invalid_json"
    assert only_error(h.send("[1, 2]"))["code"] == "invalid_type"
    assert only_error(h.send("[" * 100_000 + "]" * 100_000))["code"] == "invalid_json"
    assert only_error(h.send({"type": "output_audio_buffer.clear"})) == {
        "type": "invalid_request_error", "code": "invalid_value",
        "message": "Invalid value: 'output_audio_buffer.clear'.", "param": "type", "event_id": None,
    }
    assert only_error(h.send({"audio": ""}))["message"] == "Missing required parameter: 'type'."
    extra = only_error(h.send({"type": "input_audio_buffer.append", "audio": "", "volume": 3}))
    assert (extra["code"], extra["message"]) == ("unknown_parameter", "Unknown parameter: 'volume'.")
    odd = only_error(h.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}))
    assert odd["param"] == "audio" and "16-bit" in odd["message"]
    assert only_error(h.send({"type": "input_audio_buffer.append", "audio": "%%%"}))["param"] == "audio"
    assert types(h.update()) == ["session.updated"]


def test_commit_needs_100_ms_and_says_how_much_there_was() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    error = only_error(h.send({"type": "input_audio_buffer.commit"}))
    assert error["code"] == "input_audio_buffer_commit_empty"
    assert error["message"] == (
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only "
        "has 0.00ms of audio."
    )
    h.send(append_event(silence(50)))
    assert "only has 50.00ms of audio" in only_error(h.send({"type": "input_audio_buffer.commit"}))["message"]
    h.send(append_event(QUESTION))
    events = h.send({"type": "input_audio_buffer.commit"})
    assert types(events) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert h.core.record.user_turns == [silence(50) + QUESTION]
    assert h.advance(5.0) == []  # a commit alone creates no response


def test_clear_empties_the_buffer() -> None:
    h = Harness()
    h.update(audio={"input": {"turn_detection": None}})
    h.send(append_event(silence(300)))
    assert types(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert "only has 0.00ms" in only_error(h.send({"type": "input_audio_buffer.commit"}))["message"]


def test_an_append_over_15_mib_is_refused() -> None:
    h = Harness()
    error = only_error(h.send({"type": "input_audio_buffer.append", "audio": "A" * (15 * 1024 * 1024 + 4)}))
    assert error["code"] == "string_above_max_length" and error["param"] == "audio"


# --- a spoken turn -----------------------------------------------------------------------------------------


def test_a_spoken_turn_produces_the_documented_event_sequence_and_the_reply_audio() -> None:
    h = Harness(speed=4.0)
    h.update(audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}})
    events = h.speak(TURN) + h.until("response.done")
    head = [t for t in types(events) if not t.startswith("response.output_audio")]
    assert head[:10] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.added", "conversation.item.done", "response.created", "rate_limits.updated",
        "response.output_item.added", "conversation.item.added", "response.content_part.added",
    ]
    assert types(events)[-6:] == [
        "response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
        "response.output_item.done", "conversation.item.done", "response.done",
    ]
    started = of(events, "input_audio_buffer.speech_started")[0]
    stopped = of(events, "input_audio_buffer.speech_stopped")[0]
    assert started["item_id"] == stopped["item_id"] == of(events, "input_audio_buffer.committed")[0]["item_id"]
    assert 600 - 300 <= started["audio_start_ms"] <= 600 - 300 + 60
    assert h.core.record.user_turns == [bytes(h.core.record.input_pcm[started["audio_start_ms"] * 48 :
                                                                      stopped["audio_end_ms"] * 48])]
    reply = h.options.replies[0]
    deltas = of(events, "response.output_audio.delta")
    audio = b"".join(base64.b64decode(d["delta"]) for d in deltas)
    assert audio == VOICE.pcm(reply)
    assert all(4800 <= len(base64.b64decode(d["delta"])) <= 24000 for d in deltas[:-1])
    transcript_deltas = of(events, "response.output_audio_transcript.delta")
    assert "".join(d["delta"] for d in transcript_deltas) == reply
    assert all(isinstance(d["obfuscation"], str) and d["obfuscation"] for d in transcript_deltas)
    kinds = [t for t in types(events) if t.endswith(".delta")]
    first_audio = kinds.index("response.output_audio.delta")
    assert "response.output_audio_transcript.delta" in kinds[first_audio:]  # interleaved, not all up front
    done = of(events, "response.done")[0]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"] == [
        {"type": "output_audio", "transcript": reply}
    ]


def test_reply_audio_is_streamed_faster_than_real_time_by_the_speed_factor() -> None:
    h = Harness(speed=4.0, first_delta_delay_s=0.0)
    h.send({"type": "response.create"})
    start = h.now
    reply_s = len(VOICE.pcm(h.options.replies[0])) / 48000
    halfway = h.advance(reply_s / 8)
    sent = sum(len(base64.b64decode(e["delta"])) for e in of(halfway, "response.output_audio.delta")) / 48000
    assert "response.done" not in types(halfway)
    assert 0.2 * reply_s <= sent <= 0.8 * reply_s
    h.until("response.done")
    assert h.now - start == pytest.approx(reply_s / 4, abs=0.01)


def test_input_transcription_reports_the_configured_text() -> None:
    h = Harness(user_transcripts=("Where is the cafe?",))
    h.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
    h.speak(TURN)
    completed = h.wait("conversation.item.input_audio_transcription.completed")
    committed = h.wait("input_audio_buffer.committed")["item_id"]
    assert (completed["item_id"], completed["transcript"]) == (committed, "Where is the cafe?")
    item = h.send({"type": "conversation.item.retrieve", "item_id": committed})[0]["item"]
    assert item["content"][0]["transcript"] == "Where is the cafe?"


# --- barge-in ---------------------------------------------------------------------------------------------


def test_speech_during_a_reply_cancels_it_with_the_documented_tail_then_answers_the_new_turn() -> None:
    h = Harness(speed=1.0)
    h.speak(TURN)
    h.wait("response.output_audio.delta")
    response_id = h.wait("response.created")["response"]["id"]
    assert "response.done" not in types(h.log)
    events = h.speak(speech("Sorry, one more thing.") + silence(600))
    tail = types(events)[: types(events).index("response.done") + 1]
    assert tail == [
        "input_audio_buffer.speech_started", "response.output_audio.done", "response.output_audio_transcript.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done",
    ]
    done = of(events, "response.done")[0]["response"]
    assert done["id"] == response_id and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    sent_ms = h.core.record.responses[0].audio_ms
    assert 0 < sent_ms < len(VOICE.pcm(h.options.replies[0])) / 48
    assert done["usage"]["output_token_details"]["audio_tokens"] == math.ceil(sent_ms / 50)
    after = types(events)[types(events).index("response.done") + 1 :]
    assert after[:3] == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "conversation.item.added"]
    assert "response.created" in after


def test_without_interrupt_response_the_reply_runs_on_and_the_next_waits_for_it() -> None:
    h = Harness(speed=1.0)
    h.update(audio={"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}})
    h.speak(TURN)
    h.wait("response.output_audio.delta")
    events = h.speak(speech("Wait.") + silence(300))
    assert "input_audio_buffer.speech_started" in types(events)
    assert "input_audio_buffer.committed" in types(events)
    assert "response.done" not in types(events)  # not cancelled
    assert "response.created" not in types(events)  # the next one waits
    h.wait("response.created", 2)
    assert [(r.status, r.reason) for r in h.core.record.responses] == [("completed", None)]


# --- truncation -------------------------------------------------------------------------------------------


def _interrupted(h: Harness) -> tuple[str, str, float]:
    """Speak, let the reply start, interrupt it; return (user item id, assistant item id, assistant audio ms)."""
    h.speak(TURN)
    h.wait("response.output_audio.delta")
    h.speak(speech("Wait.") + silence(300))
    assert h.core.record.responses[0].reason == "turn_detected"
    user = h.wait("input_audio_buffer.committed")["item_id"]
    assistant = h.wait("response.output_item.added")["item"]["id"]
    return user, assistant, h.core.record.responses[0].audio_ms


def test_truncate_errors_use_the_service_texts() -> None:
    h = Harness(speed=1.0)
    user, assistant, audio_ms = _interrupted(h)
    unknown = only_error(h.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                                 "audio_end_ms": 10}))
    assert unknown["code"] == "item_truncate_invalid_item_id"
    not_audio = only_error(h.send({"type": "conversation.item.truncate", "item_id": user, "content_index": 0,
                                   "audio_end_ms": 10}))
    assert (not_audio["code"], not_audio["message"]) == (
        "unsupported_content_type", "Only model output audio messages can be truncated"
    )
    past = only_error(h.send({"type": "conversation.item.truncate", "event_id": "t1", "item_id": assistant,
                              "content_index": 0, "audio_end_ms": int(audio_ms) + 1000}))
    assert past["message"] == f"Audio content of {int(audio_ms)}ms is already shorter than {int(audio_ms) + 1000}ms"
    assert past["event_id"] is None
    assert [t.accepted for t in h.core.record.truncations] == [False, False, False]


def test_truncate_cuts_the_audio_drops_the_transcript_and_bills_only_what_is_left() -> None:
    h = Harness(speed=1.0)
    _, assistant, audio_ms = _interrupted(h)
    h.wait("response.done", 2)  # the answer to the interruption
    keep = int(audio_ms // 2)
    events = h.send({"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0,
                     "audio_end_ms": keep})
    assert events[0] == {**events[0], "type": "conversation.item.truncated", "item_id": assistant,
                         "content_index": 0, "audio_end_ms": keep}
    item = h.send({"type": "conversation.item.retrieve", "item_id": assistant})[0]["item"]
    assert len(base64.b64decode(item["content"][0]["audio"])) == keep * 48
    assert item["content"][0]["transcript"] is None
    truncation = h.core.record.truncations[-1]
    assert (truncation.accepted, truncation.audio_end_ms, truncation.item_audio_ms) == (True, keep, audio_ms)
    h.send({"type": "response.create"})
    done = h.until("response.done")[-1]["response"]
    audio_in = done["usage"]["input_token_details"]["audio_tokens"]
    user_tokens = sum(math.ceil(len(turn) / 48 / 100) for turn in h.core.record.user_turns)
    second_reply_ms = h.core.record.responses[1].audio_ms
    assert audio_in == user_tokens + math.ceil(keep / 50) + math.ceil(second_reply_ms / 50)


# --- items ------------------------------------------------------------------------------------------------


def _text_item(text: str, role: str = "user", **extra: Any) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "conversation.item.create", "item": {"type": "message", "role": role,
                                                         "content": [{"type": kind, "text": text}], **extra}}


def test_items_can_be_created_placed_retrieved_and_deleted() -> None:
    h = Harness()
    first = h.send(_text_item("What time is it?"))
    assert types(first) == ["conversation.item.added", "conversation.item.done"]
    assert first[0]["previous_item_id"] is None
    first_id = first[0]["item"]["id"]
    second = h.send(_text_item("It is noon.", role="assistant", id="item_mine"))
    assert second[0]["item"]["id"] == "item_mine" and second[0]["previous_item_id"] == first_id
    root = h.send({**_text_item("Be brief.", role="system"), "previous_item_id": "root"})
    assert root[0]["previous_item_id"] is None
    middle = h.send({**_text_item("Thanks"), "previous_item_id": first_id})
    assert middle[0]["previous_item_id"] == first_id
    assert h.send({"type": "conversation.item.retrieve", "item_id": "item_mine"})[0]["item"]["content"] == [
        {"type": "output_text", "text": "It is noon."}
    ]
    assert types(h.send({"type": "conversation.item.delete", "item_id": "item_mine"})) == ["conversation.item.deleted"]
    gone = only_error(h.send({"type": "conversation.item.delete", "item_id": "item_mine"}))
    assert (gone["code"], gone["message"]) == (
        "item_delete_invalid_item_id", "Error deleting item: the item with id 'item_mine' does not exist."
    )
    assert only_error(h.send({"type": "conversation.item.retrieve", "item_id": "item_mine"}))["code"] == (
        "item_retrieve_invalid_item_id"
    )
    assert only_error(h.send({**_text_item("x"), "previous_item_id": "item_nope"}))["param"] == "previous_item_id"


def test_assistant_audio_items_cannot_be_created() -> None:
    h = Harness()
    error = only_error(h.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "hi"}]}}))
    assert (error["code"], error["message"]) == (
        "missing_required_parameter", "Missing required parameter: 'item.content[0].text'."
    )


# --- responses --------------------------------------------------------------------------------------------


def test_one_active_response_per_conversation_and_cancel_rules() -> None:
    h = Harness(speed=1.0)
    created = h.send({"type": "response.create"})
    response_id = created[0]["response"]["id"]
    busy = only_error(h.send({"type": "response.create"}))
    assert busy["code"] == "conversation_already_has_active_response"
    assert busy["message"] == (
        f"Conversation already has an active response in progress: {response_id}. Wait until the response is "
        "finished before creating a new one."
    )
    h.advance(0.3)
    cancelled = h.send({"type": "response.cancel"})
    assert types(cancelled)[-1] == "response.done"
    assert cancelled[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    none = only_error(h.send({"type": "response.cancel"}))
    assert (none["code"], none["message"]) == (
        "response_cancel_not_active", "Cancellation failed: no active response found"
    )


def test_out_of_band_text_response_runs_beside_the_conversation() -> None:
    h = Harness(speed=1.0)
    h.send({"type": "response.create"})
    events = h.send({"type": "response.create", "response": {
        "conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "classify"},
        "instructions": "One word.", "input": [{"type": "message", "role": "user",
                                                 "content": [{"type": "input_text", "text": "billing?"}]}]}})
    created = events[0]["response"]
    assert created["conversation_id"] is None and created["metadata"] == {"purpose": "classify"}
    assert "conversation.item.added" not in types(events)
    events += h.until("response.done")
    while len(of(events, "response.done")) < 2:
        events += h.until("response.done")
    text_done = next(e for e in of(events, "response.done") if e["response"]["id"] == created["id"])["response"]
    assert text_done["output"][0]["content"][0]["type"] == "output_text"
    assert of(events, "response.output_text.done")[0]["text"] == text_done["output"][0]["content"][0]["text"]
    assert not [e for e in of(events, "response.output_audio.delta") if e["response_id"] == created["id"]]


def test_max_output_tokens_ends_the_reply_as_incomplete() -> None:
    h = Harness()
    h.update(max_output_tokens=20)
    h.send({"type": "response.create"})
    done = h.until("response.done")[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert 10 <= done["usage"]["output_tokens"] <= 20


def test_injected_response_failure_is_a_failed_response_done() -> None:
    h = Harness(faults=Faults(fail_responses="server_error"))
    events = h.send({"type": "response.create"})
    assert types(events) == ["response.created", "rate_limits.updated", "response.done"]
    done = events[-1]["response"]
    assert done["status"] == "failed" and done["usage"] is None
    assert done["status_details"]["error"]["type"] == "server_error"
    assert h.core.record.session_id in done["status_details"]["error"]["message"]
    assert types(h.send({"type": "response.create"}))[0] == "response.created"  # nothing left active


# --- usage ------------------------------------------------------------------------------------------------


def test_usage_bills_the_whole_conversation_in_the_documented_rates() -> None:
    h = Harness(speed=8.0)
    instructions = "You are the voice of this kiosk. Answer briefly."
    h.update(instructions=instructions)
    h.speak(TURN)
    first = h.wait("response.done")["response"]["usage"]
    user_ms = len(h.core.record.user_turns[0]) / 48
    reply, reply_ms = h.core.record.responses[0].text, h.core.record.responses[0].audio_ms
    assert first == {
        "total_tokens": first["input_tokens"] + first["output_tokens"],
        "input_tokens": math.ceil(len(instructions) / 4) + math.ceil(user_ms / 100),
        "output_tokens": math.ceil(reply_ms / 50) + math.ceil(len(reply) / 4),
        "input_token_details": {
            "text_tokens": math.ceil(len(instructions) / 4), "audio_tokens": math.ceil(user_ms / 100),
            "image_tokens": 0, "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": math.ceil(len(reply) / 4), "audio_tokens": math.ceil(reply_ms / 50)},
    }
    h.send({"type": "response.create"})
    second = h.wait("response.done", 2)["response"]["usage"]
    assert second["input_token_details"]["audio_tokens"] == math.ceil(user_ms / 100) + math.ceil(reply_ms / 50)
    total = h.core.record.usage
    assert (total.input_tokens, total.output_tokens) == (
        first["input_tokens"] + second["input_tokens"], first["output_tokens"] + second["output_tokens"]
    )


def test_a_long_conversation_gets_cached_tokens_in_128_token_steps() -> None:
    cache = PromptCache()
    h = Harness(cache=cache, speed=20.0)
    h.update(instructions="Short.")
    for n in range(30):  # 30 user notes of 200 characters: 1500 text tokens
        h.send(_text_item(f"Note {n:02d}: " + "x" * 192))
    h.send({"type": "response.create"})
    first = h.until("response.done")[-1]["response"]["usage"]["input_token_details"]
    assert first["cached_tokens"] == 0
    h.send({"type": "response.create"})
    second = h.until("response.done")[-1]["response"]["usage"]
    prefix = math.ceil(len("Short.") / 4) + 30 * 50
    assert second["input_token_details"]["cached_tokens"] == prefix // 128 * 128
    assert second["input_token_details"]["cached_tokens_details"]["text_tokens"] == prefix // 128 * 128
    assert second["input_token_details"]["cached_tokens"] <= second["input_tokens"]
    # The same long instructions in another session on the same server are cached from its first response.
    long_instructions = "Always be helpful and precise. " * 150
    a, b = Harness(cache=cache, speed=20.0), Harness(cache=cache, speed=20.0)
    for session in (a, b):
        session.update(instructions=long_instructions)
        session.send({"type": "response.create"})
    a_usage = a.until("response.done")[-1]["response"]["usage"]["input_token_details"]
    b_usage = b.until("response.done")[-1]["response"]["usage"]["input_token_details"]
    assert a_usage["cached_tokens"] == 0
    assert b_usage["cached_tokens"] == math.ceil(len(long_instructions) / 4) // 128 * 128


def test_equal_ids_with_different_content_share_no_cache() -> None:
    cache = PromptCache()
    for word in ("apples", "pears"):  # same seed, so the same item ids in both sessions
        h = Harness(cache=cache, speed=20.0)
        h.update(instructions="Short.")
        for n in range(30):
            h.send(_text_item(f"Note {n:02d} about {word}: " + "x" * 180))
        h.send({"type": "response.create"})
        assert h.wait("response.done")["response"]["usage"]["input_token_details"]["cached_tokens"] == 0


def test_short_prompts_are_never_cached() -> None:
    h = Harness(speed=20.0)
    for _ in range(3):
        h.send({"type": "response.create"})
        assert h.until("response.done")[-1]["response"]["usage"]["input_token_details"]["cached_tokens"] == 0


# --- session cap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_type", "text"),
    [
        ("server_error", "server_error", "The server had an error while processing your request."),
        ("rate_limit_exceeded", "rate_limit_error", "Rate limit reached"),
        ("session_expired", "invalid_request_error", "Your session hit the maximum duration of 30 minutes."),
    ],
)
def test_injected_error_events_read_like_the_service(code: str, error_type: str, text: str) -> None:
    h = Harness()
    event = h.core.fault_error_event(code)
    validate_server_event(event)
    assert (event["error"]["type"], event["error"]["code"]) == (error_type, code)
    assert event["error"]["message"].startswith(text)


def test_the_session_closes_with_1001_at_its_cap() -> None:
    h = Harness(session_cap_s=120.0)
    assert h.created["session"]["expires_at"] == int(WALL) + 120
    h.advance(119.9)
    assert h.closes == []
    h.advance(0.2)
    assert h.closes == [Close(1001, "Your session hit the maximum duration of 2 minutes.")]
    assert h.core.poll(h.now + 1) == [] and h.core.next_deadline() is None
    assert session_cap_reason(1800) == "Your session hit the maximum duration of 30 minutes."
