"""The protocol core: barge-in arithmetic, response tracking, usage, errors, expiry — no socket, no clock.

Server events used here are checked against the official ``openai.types.realtime`` server-event models, so
the core is exercised with what a GA server really sends.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from kioskd.config import RealtimeConfig
from kioskd.realtime import events
from kioskd.realtime.events import parse_server_event
from kioskd.realtime.session import (
    Action,
    FlushPlayback,
    PlayAudio,
    RealtimeSession,
    ResponseDone,
    ResponseStarted,
    Send,
    ServerError,
    SessionEnded,
    SessionReady,
    SpeechStarted,
    SpeechStopped,
    Transcript,
    Truncated,
    Usage,
)

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
MS = 24  # samples per millisecond at 24 kHz


class Speaker:
    """A stand-in for the playback buffer: which item is audible, and how many samples of it were played."""

    def __init__(self) -> None:
        self.playing: str | None = None
        self.played: dict[str, int] = {}

    def current_item(self) -> str | None:
        return self.playing

    def played_samples(self, item_id: str) -> int:
        return self.played.get(item_id, 0)


def ga(event: dict[str, Any]) -> dict[str, Any]:
    """Insist a hand-written server event is valid GA (as the server would send it), then return it."""
    event = {"event_id": "event_test", **event}
    SERVER_EVENT.validate_python(event)
    return event


def session_obj(expires_at: int = 1_767_233_035) -> dict[str, Any]:
    return {"type": "realtime", "object": "realtime.session", "id": "sess_1", "model": "gpt-realtime-1.5",
            "expires_at": expires_at, "instructions": "hi"}


def session_updated(expires_at: int = 1_767_233_035) -> dict[str, Any]:
    return ga({"type": "session.updated", "session": session_obj(expires_at)})


def response_created(rid: str) -> dict[str, Any]:
    return ga({"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                         "status": "in_progress", "output": []}})


def audio_delta(item: str, rid: str, samples: int, value: int = 1) -> dict[str, Any]:
    pcm = value.to_bytes(2, "little", signed=True) * samples
    return ga({"type": "response.output_audio.delta", "response_id": rid, "item_id": item, "output_index": 0,
               "content_index": 0, "delta": base64.b64encode(pcm).decode()})


def speech_started(item: str = "item_user2", at_ms: int = 4000) -> dict[str, Any]:
    return ga({"type": "input_audio_buffer.speech_started", "audio_start_ms": at_ms, "item_id": item})


def error(code: str | None, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return ga({"type": "error", "error": {"type": kind, "code": code, "message": message, "param": None,
                                          "event_id": None}})


USAGE_CAPTURE = {  # a real GA response.done usage (realtime-protocol.md §3.8)
    "total_tokens": 320, "input_tokens": 132, "output_tokens": 188,
    "input_token_details": {"text_tokens": 59, "audio_tokens": 73, "image_tokens": 0, "cached_tokens": 64,
                            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64, "image_tokens": 0}},
    "output_token_details": {"text_tokens": 41, "audio_tokens": 147},
}


def response_done(rid: str, status: str = "completed", usage: Any = USAGE_CAPTURE,
                  details: Any = None) -> dict[str, Any]:
    return ga({"type": "response.done", "response": {"id": rid, "object": "realtime.response", "status": status,
                                                      "status_details": details, "output": [], "usage": usage}})


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kioskd_log() -> Iterator[list[logging.LogRecord]]:
    """What the core logs (on kioskd's logger, whatever its handlers and propagation)."""
    logger = logging.getLogger("kioskd")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def speaker() -> Speaker:
    return Speaker()


@pytest.fixture
def core(speaker: Speaker) -> RealtimeSession:
    """A session that has been configured and confirmed."""
    session = RealtimeSession(speaker)
    session.configure(events.session_update(RealtimeConfig()))
    assert session.handle(session_updated()) != []
    return session


def sends(actions: list[Action]) -> list[dict[str, Any]]:
    return [dict(a.event) for a in actions if isinstance(a, Send)]


# -- set-up -------------------------------------------------------------------------------------------------


def test_ready_only_once_the_server_confirms_our_update(speaker: Speaker) -> None:
    session = RealtimeSession(speaker)
    update = events.session_update(RealtimeConfig())
    assert session.configure(update) == [Send(update)]
    assert session.handle(ga({"type": "session.created", "session": session_obj()})) == []
    assert not session.ready
    actions = session.handle(session_updated())
    assert session.ready
    assert actions == [SessionReady(session_obj())]
    assert session.handle(session_updated()) == []  # a later update confirms, it does not re-announce


def test_an_error_answering_our_update_is_fatal(speaker: Speaker) -> None:
    session = RealtimeSession(speaker)
    session.configure(events.session_update(RealtimeConfig()))
    actions = session.handle(error("unknown_parameter", "Unknown parameter: 'session.type'."))
    assert actions[0] == ServerError("unknown_parameter", "Unknown parameter: 'session.type'.", fatal=True)
    assert isinstance(actions[1], SessionEnded) and "unknown_parameter" in actions[1].reason
    assert session.ended is not None
    assert session.handle(session_updated()) == []  # an ended session takes no further events


def test_expires_at_becomes_a_monotonic_deadline(speaker: Speaker) -> None:
    mono, wall = [500.0], [1_767_231_235.0]  # 30 minutes before expires_at
    session = RealtimeSession(speaker, clock=lambda: mono[0], wall_clock=lambda: wall[0])
    assert session.deadline is None and not session.expired()
    session.handle(ga({"type": "session.created", "session": session_obj(expires_at=1_767_233_035)}))
    assert session.deadline == pytest.approx(500.0 + 1800.0)
    wall[0] += 5000.0  # the wall clock jumps (NTP); the deadline does not move with it
    mono[0] = 2299.9
    assert not session.expired()
    mono[0] = 2300.0
    assert session.expired()


# -- audio and barge-in ----------------------------------------------------------------------------------


def test_response_audio_is_played_and_counted_per_item(core: RealtimeSession) -> None:
    assert core.handle(response_created("resp_1")) == [ResponseStarted("resp_1")]
    assert core.active_response_id == "resp_1"
    actions = core.handle(audio_delta("item_a", "resp_1", 2400, value=-3))
    assert actions == [PlayAudio("item_a", "resp_1", (-3).to_bytes(2, "little", signed=True) * 2400)]
    core.handle(audio_delta("item_a", "resp_1", 4800))
    assert core.received_samples("item_a") == 7200
    assert core.received_samples("item_other") == 0


def test_barge_in_flushes_and_truncates_at_the_played_position(core: RealtimeSession, speaker: Speaker) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 1000 * MS))  # a second of reply received
    speaker.playing, speaker.played["item_a"] = "item_a", 437 * MS + 5  # 437.2 ms heard
    actions = core.handle(speech_started("item_u2", at_ms=3100))
    assert actions == [
        FlushPlayback("item_a"),
        Send(events.truncate("item_a", 437)),
        SpeechStarted(3100, "item_u2"),
    ]


def test_barge_in_never_reports_more_than_was_received(core: RealtimeSession, speaker: Speaker) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 250 * MS))
    speaker.playing, speaker.played["item_a"] = "item_a", 900 * MS  # a device that over-reports
    assert sends(core.handle(speech_started())) == [events.truncate("item_a", 250)]


def test_barge_in_before_any_audio_was_heard_sends_no_truncate(core: RealtimeSession, speaker: Speaker) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 500 * MS))
    speaker.playing = "item_a"  # queued, nothing handed to the device yet
    actions = core.handle(speech_started())
    assert actions == [FlushPlayback("item_a"), SpeechStarted(4000, "item_user2")]


def test_barge_in_on_an_item_with_no_audio_sends_no_truncate(core: RealtimeSession, speaker: Speaker) -> None:
    speaker.playing, speaker.played["item_ghost"] = "item_ghost", 10 * MS
    assert sends(core.handle(speech_started())) == []


def test_late_deltas_of_the_interrupted_reply_are_dropped(core: RealtimeSession, speaker: Speaker) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 300 * MS))
    speaker.playing, speaker.played["item_a"] = "item_a", 100 * MS
    core.handle(speech_started())
    speaker.playing = None  # the flush emptied the speaker
    assert core.handle(audio_delta("item_a", "resp_1", 300 * MS)) == []
    assert core.handle(audio_delta("item_b", "resp_1", 300 * MS)) == []  # same response, later item
    assert core.received_samples("item_a") == 300 * MS
    # The server's cancellation ends the old response; the next reply plays normally.
    assert core.handle(response_done("resp_1", "cancelled", details={"type": "cancelled", "reason": "turn_detected"}))[
        -1] == ResponseDone("resp_1", "cancelled", "turn_detected")
    core.handle(response_created("resp_2"))
    assert core.handle(audio_delta("item_c", "resp_2", 10 * MS)) != []


def test_speech_while_a_reply_is_generating_but_not_yet_audible_drops_that_reply(
    core: RealtimeSession, speaker: Speaker
) -> None:
    core.handle(response_created("resp_1"))
    assert core.handle(speech_started()) == [SpeechStarted(4000, "item_user2")]
    assert core.handle(audio_delta("item_a", "resp_1", 100 * MS)) == []


def test_barge_in_on_a_completed_reply_still_truncates_what_was_unheard(
    core: RealtimeSession, speaker: Speaker
) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 5000 * MS))
    core.handle(response_done("resp_1"))  # generated faster than real time: done long before it is heard
    assert core.active_response_id is None
    speaker.playing, speaker.played["item_a"] = "item_a", 1200 * MS
    assert sends(core.handle(speech_started())) == [events.truncate("item_a", 1200)]


def test_a_second_speech_start_does_not_truncate_the_same_item_twice(
    core: RealtimeSession, speaker: Speaker
) -> None:
    core.handle(response_created("resp_1"))
    core.handle(audio_delta("item_a", "resp_1", 1000 * MS))
    speaker.playing, speaker.played["item_a"] = "item_a", 500 * MS
    assert len(sends(core.handle(speech_started("item_u2")))) == 1
    assert core.handle(speech_started("item_u3")) == [FlushPlayback("item_a"), SpeechStarted(4000, "item_u3")]


def test_speech_stopped_and_truncated_are_reported(core: RealtimeSession) -> None:
    assert core.handle(ga({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 3808,
                           "item_id": "item_u"})) == [SpeechStopped(3808, "item_u")]
    assert core.handle(ga({"type": "conversation.item.truncated", "item_id": "item_a", "content_index": 0,
                           "audio_end_ms": 1840})) == [Truncated("item_a", 1840)]


# -- responses, usage, transcripts -------------------------------------------------------------------------


def test_usage_comes_from_response_done_and_sums_over_the_session(core: RealtimeSession) -> None:
    core.handle(response_created("resp_1"))
    actions = core.handle(response_done("resp_1"))
    expected = Usage("resp_1", text_in=59, audio_in=73, cached_text_in=0, cached_audio_in=64, text_out=41,
                     audio_out=147)
    assert actions == [expected, ResponseDone("resp_1", "completed", None)]
    assert core.active_response_id is None
    core.handle(response_created("resp_2"))
    core.handle(response_done("resp_2"))
    assert core.usage.responses == 2
    assert (core.usage.audio_in, core.usage.cached_audio_in, core.usage.audio_out) == (146, 128, 294)


def test_a_failed_response_reports_its_error_and_bills_nothing(core: RealtimeSession) -> None:
    core.handle(response_created("resp_1"))
    details = {"type": "failed", "error": {"type": "server_error", "code": "rate_limit_exceeded",
                                           "message": "slow down"}}
    actions = core.handle(response_done("resp_1", "failed", usage=None, details=details))
    assert actions == [ResponseDone("resp_1", "failed", "rate_limit_exceeded")]
    assert core.usage.responses == 0


def test_only_the_matching_response_done_clears_the_active_response(core: RealtimeSession) -> None:
    core.handle(response_created("resp_2"))
    core.handle(response_done("resp_1"))
    assert core.active_response_id == "resp_2"


def test_final_transcripts_of_both_sides(core: RealtimeSession) -> None:
    assistant = ga({"type": "response.output_audio_transcript.done", "response_id": "resp_1", "item_id": "item_a",
                    "output_index": 0, "content_index": 0, "transcript": "It's five past two."})
    user = ga({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_u",
               "content_index": 0, "transcript": "What time is it?", "usage": {"type": "duration", "seconds": 2.6}})
    text = ga({"type": "response.output_text.done", "response_id": "resp_1", "item_id": "item_t",
               "output_index": 0, "content_index": 0, "text": "Hello."})
    assert core.handle(assistant) == [Transcript("assistant", "item_a", "It's five past two.")]
    assert core.handle(user) == [Transcript("user", "item_u", "What time is it?")]
    assert core.handle(text) == [Transcript("assistant", "item_t", "Hello.")]


# -- tolerance ---------------------------------------------------------------------------------------------


def test_legacy_names_drive_the_core_like_ga_names(core: RealtimeSession) -> None:
    pcm = b"\x01\x00" * 480
    frame = json.dumps({"type": "response.audio.delta", "response_id": "resp_1", "item_id": "item_a",
                        "delta": base64.b64encode(pcm).decode()})
    assert core.handle(parse_server_event(frame)) == [PlayAudio("item_a", "resp_1", pcm)]
    frame = json.dumps({"type": "response.audio_transcript.done", "item_id": "item_a", "transcript": "Hi."})
    assert core.handle(parse_server_event(frame)) == [Transcript("assistant", "item_a", "Hi.")]
    frame = json.dumps({"type": "conversation.item.created", "item": {"id": "item_a"}})
    assert core.handle(parse_server_event(frame)) == []


def test_unknown_events_and_fields_are_ignored(core: RealtimeSession) -> None:
    assert core.handle({"type": "response.brand_new_event", "anything": [1, 2, 3]}) == []
    assert core.handle(ga({"type": "rate_limits.updated", "rate_limits": [
        {"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}]})) == []
    delta = audio_delta("item_a", "resp_1", 10) | {"obfuscation": "z9A9dJucSf1J", "future": {"x": 1}}
    assert len(core.handle(delta)) == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("response_cancel_not_active", "Cancellation failed: no active response found"),
        ("conversation_already_has_active_response",
         "Conversation already has an active response in progress: resp_1. Wait until the response is finished."),
        (None, "Audio content of 9800ms is already shorter than 11579ms"),
        ("input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer too small."),
    ],
)
def test_benign_errors_leave_the_session_running(core: RealtimeSession, code: str | None, message: str) -> None:
    assert core.handle(error(code, message)) == [ServerError(code, message, fatal=False)]
    assert core.ended is None


@pytest.mark.parametrize(
    ("code", "kind"),
    [("session_expired", "invalid_request_error"), ("invalid_api_key", "invalid_request_error"),
     (None, "authentication_error"), ("token_expired", "invalid_request_error")],
)
def test_expiry_and_auth_errors_end_the_session(core: RealtimeSession, code: str | None, kind: str) -> None:
    actions = core.handle(error(code, "no more", kind))
    assert actions[0] == ServerError(code, "no more", fatal=True)
    assert isinstance(actions[1], SessionEnded)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "%%%not base64"},
        {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "AAA"},
        {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
         "delta": base64.b64encode(b"\x00\x01\x02").decode()},
        {"type": "response.output_audio.delta", "response_id": 5, "item_id": "i", "delta": ""},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": "soon", "item_id": "i"},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": True, "item_id": "i"},
        {"type": "response.created", "response": None},
        {"type": "response.done", "response": {"id": ["x"]}},
        {"type": "session.updated", "session": {"expires_at": "tomorrow"}},
        {"type": "conversation.item.truncated", "item_id": "i", "audio_end_ms": 1.5},
    ],
    ids=["bad-b64", "bad-padding", "odd-pcm", "id-type", "ms-str", "ms-bool", "no-response", "id-list",
         "expiry-str", "ms-float"],
)
def test_malformed_events_become_logged_non_fatal_errors(
    core: RealtimeSession, event: dict[str, Any], kioskd_log: list[logging.LogRecord]
) -> None:
    actions = core.handle(event)
    assert len(actions) == 1 and isinstance(actions[0], ServerError)
    assert actions[0].code == "malformed_event" and not actions[0].fatal
    assert event["type"] in actions[0].message
    assert [getattr(r, "ERROR_CODE", None) for r in kioskd_log] == ["malformed_event"]
    assert kioskd_log[0].levelno == logging.WARNING
    assert core.handle(response_created("resp_9")) == [ResponseStarted("resp_9")]  # and life goes on


def test_a_malformed_bill_does_not_hide_the_end_of_the_response(core: RealtimeSession) -> None:
    core.handle(response_created("resp_1"))
    actions = core.handle({"type": "response.done", "response": {
        "id": "resp_1", "status": "completed", "usage": {"output_token_details": {"audio_tokens": -4}}}})
    assert isinstance(actions[0], ServerError) and not actions[0].fatal
    assert actions[-1] == ResponseDone("resp_1", "completed", None)
    assert core.active_response_id is None


def test_a_frame_that_is_not_an_event_is_reported_not_fatal(core: RealtimeSession) -> None:
    assert core.protocol_error("frame is not valid JSON: '{'") == [
        ServerError("malformed_frame", "frame is not valid JSON: '{'", fatal=False)]
    assert core.ended is None


def test_connection_loss_ends_the_session_once(core: RealtimeSession) -> None:
    core.handle(response_created("resp_1"))
    assert core.connection_lost(1001, "session expired") == [SessionEnded("session expired")]
    assert core.active_response_id is None
    assert core.connection_lost(1006, "connection dropped") == []
    assert core.handle(audio_delta("item_a", "resp_1", 10)) == []


# -- fuzz --------------------------------------------------------------------------------------------------

KNOWN_TYPES = [
    "session.created", "session.updated", "error", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "response.created", "response.output_audio.delta",
    "response.output_audio_transcript.done", "response.output_text.done",
    "conversation.item.input_audio_transcription.completed", "conversation.item.input_audio_transcription.failed",
    "response.done", "conversation.item.truncated", "response.audio.delta", "something.else",
]
FIELDS = ["item_id", "response_id", "delta", "audio_start_ms", "audio_end_ms", "transcript", "text", "session",
          "response", "error", "usage", "expires_at", "id", "status", "status_details", "code", "message",
          "input_token_details", "output_token_details", "cached_tokens_details", "audio_tokens", "reason"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
    | st.sampled_from(["AAAA", "AAE=", "resp_1", "item_a", "", "==", "AQID"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5),
    max_leaves=20,
)
fuzz_events = st.builds(
    lambda kind, body: {**body, "type": kind},
    st.sampled_from(KNOWN_TYPES),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz_events, max_size=8), st.sampled_from([None, "item_a", "resp_1"]), st.integers(-10, 10**6))
def test_no_sequence_of_events_makes_the_core_raise(
    sequence: list[dict[str, Any]], playing: str | None, played: int
) -> None:
    speaker = Speaker()
    speaker.playing, speaker.played = playing, {"item_a": played, "resp_1": played}
    core = RealtimeSession(speaker, clock=lambda: 0.0, wall_clock=lambda: 0.0)
    core.configure(events.session_update(RealtimeConfig()))
    for event in sequence:
        actions = core.handle(event)
        assert isinstance(actions, list)
        for action in actions:
            if isinstance(action, Send) and action.event["type"] == "conversation.item.truncate":
                assert 0 < action.event["audio_end_ms"] <= core.received_samples(action.event["item_id"]) // MS
            if isinstance(action, PlayAudio):
                assert len(action.pcm) % 2 == 0
