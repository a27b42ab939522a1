"""The realtime protocol core: server events in, actions out, no I/O.

This is where the rules of realtime-protocol.md §3–4 live — which audio to play, when to flush it, how many
milliseconds to report as heard on a barge-in, which errors end the session, what a response cost — as
plain code fed parsed events and a clock. The WebSocket driver (:mod:`kioskd.realtime.client`) and the
daemon only carry out the returned actions, so every rule here is testable without a socket, a sound card
or a real clock, in the manner of the sans-I/O cores of ``websockets`` and ``h11``.

Nothing a server sends can make :meth:`RealtimeSession.handle` raise: an event with fields of the wrong
type, bad base64 or half a PCM sample becomes a non-fatal :class:`ServerError`, logged once here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Protocol

from kioskd.logs import get_logger, log_event
from kioskd.realtime.events import BYTES_PER_SAMPLE, SAMPLE_RATE, truncate

log = get_logger("realtime")

SAMPLES_PER_MS = SAMPLE_RATE // 1000

BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
"""Races between client and server that leave the conversation intact (realtime-protocol.md §4.3)."""
TRUNCATE_PAST_END = re.compile(r"Audio content of \d+ms is already shorter than \d+ms")
"""The (code-less) error for a truncate beyond the item's end; the server truncates at the end anyway."""
_AUTH_WORDS = ("auth", "api_key", "unauthorized", "forbidden", "permission", "token_expired", "credential")


class PlaybackView(Protocol):
    """What the core needs to know about the speaker: which reply is audible, and how much of it was."""

    def current_item(self) -> str | None:
        """The assistant item audible or queued right now, else None."""
        ...

    def played_samples(self, item_id: str) -> int:
        """24 kHz samples of ``item_id`` actually handed to the output device."""
        ...


@dataclass(frozen=True)
class Send:
    """Send this client event to the server."""

    event: Mapping[str, Any]


@dataclass(frozen=True)
class PlayAudio:
    """Queue assistant audio (PCM16 mono 24 kHz) for the speaker, labelled with its item."""

    item_id: str
    response_id: str
    pcm: bytes


@dataclass(frozen=True)
class FlushPlayback:
    """Drop everything queued for the speaker now (a barge-in): the item is no longer wanted."""

    item_id: str


@dataclass(frozen=True)
class SpeechStarted:
    """The server's VAD heard the visitor start speaking."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    """The server's VAD heard the visitor stop speaking."""

    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class Transcript:
    """The final text of one item: what the visitor said, or what the assistant generated."""

    role: Literal["user", "assistant"]
    item_id: str
    text: str


@dataclass(frozen=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True)
class ResponseDone:
    """A response ended; ``status`` is completed | cancelled | incomplete | failed."""

    response_id: str
    status: str
    reason: str | None


@dataclass(frozen=True)
class Usage:
    """The tokens one response was billed for (cached counts are part of the input counts)."""

    response_id: str
    text_in: int = 0
    audio_in: int = 0
    cached_text_in: int = 0
    cached_audio_in: int = 0
    text_out: int = 0
    audio_out: int = 0


@dataclass(frozen=True)
class UsageTotals:
    """Tokens over the whole session, summed from every ``response.done``."""

    responses: int = 0
    text_in: int = 0
    audio_in: int = 0
    cached_text_in: int = 0
    cached_audio_in: int = 0
    text_out: int = 0
    audio_out: int = 0

    def plus(self, usage: Usage) -> UsageTotals:
        counts = {f.name: getattr(self, f.name) + getattr(usage, f.name) for f in fields(self) if f.name != "responses"}
        return UsageTotals(responses=self.responses + 1, **counts)


@dataclass(frozen=True)
class SessionReady:
    """The server accepted our ``session.update``; ``session`` is its full effective configuration."""

    session: Mapping[str, Any]


@dataclass(frozen=True)
class Truncated:
    """The server cut an assistant item to what the visitor heard."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class ServerError:
    """An error from the server or a broken event; ``fatal`` errors end the session."""

    code: str | None
    message: str
    fatal: bool


@dataclass(frozen=True)
class SessionEnded:
    """The session is over (closed, dropped, expired or failed); ``reason`` says which, for the log."""

    reason: str


Action = (
    Send | PlayAudio | FlushPlayback | SpeechStarted | SpeechStopped | Transcript | ResponseStarted | ResponseDone
    | Usage | SessionReady | Truncated | ServerError | SessionEnded
)


class MalformedEvent(ValueError):
    """An event whose fields break the protocol (wrong type, bad base64, half a sample)."""


@dataclass
class _Bookkeeping:
    received: dict[str, int] = field(default_factory=dict)  # samples received per assistant item
    interrupted_items: set[str] = field(default_factory=set)
    interrupted_responses: set[str] = field(default_factory=set)


class RealtimeSession:
    """One realtime session's protocol state: feed it server events, carry out the actions it returns."""

    def __init__(
        self,
        playback: PlaybackView,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._playback = playback
        self._clock = clock
        self._wall_clock = wall_clock
        self._books = _Bookkeeping()
        self.ready = False
        """True once the server confirmed our ``session.update``."""
        self.session: Mapping[str, Any] | None = None
        """The server's latest view of the session configuration."""
        self.active_response_id: str | None = None
        """The response between ``response.created`` and ``response.done``; ask for no other meanwhile."""
        self.usage = UsageTotals()
        self.ended: str | None = None
        """Why the session ended, once it has."""
        self._deadline: float | None = None
        self._update_pending = False

    # -- what the client sends -------------------------------------------------------------------------

    def configure(self, session_update: Mapping[str, Any]) -> list[Action]:
        """Send the ``session.update``; an error before the server confirms it ends the session."""
        self._update_pending = True
        return [Send(session_update)]

    # -- what the server sends -------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When (on ``clock``) the server will end this session, from ``session.expires_at``."""
        return self._deadline

    def expired(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    def received_samples(self, item_id: str) -> int:
        """Samples of ``item_id`` received from the server (and not dropped as stale)."""
        return self._books.received.get(item_id, 0)

    def handle(self, event: Mapping[str, Any]) -> list[Action]:
        """One parsed server event in, the actions it calls for out; never raises for bad input."""
        if self.ended is not None:
            return []
        kind = event.get("type") if isinstance(event, Mapping) else None
        if not isinstance(kind, str):
            return self._error("malformed_event", "event has no string 'type'", fatal=False)
        handler = self._HANDLERS.get(kind)
        if handler is None:
            return []  # unknown types are the server's business (new features, beta leftovers)
        try:
            return handler(self, event)
        except MalformedEvent as exc:
            return self._error("malformed_event", f"{kind}: {exc}", fatal=False)

    def protocol_error(self, message: str) -> list[Action]:
        """A frame that was not an event at all (not JSON, no type): logged, and the session goes on."""
        if self.ended is not None:
            return []
        return self._error("malformed_frame", message, fatal=False)

    def connection_lost(self, code: int | None, reason: str) -> list[Action]:
        """The WebSocket closed (``code`` None: it dropped without a close frame)."""
        if self.ended is not None:
            return []
        self.active_response_id = None
        return self._end(reason or (f"connection closed (code {code})" if code else "connection dropped"))

    # -- handlers ------------------------------------------------------------------------------------

    def _on_session(self, event: Mapping[str, Any]) -> list[Action]:
        session = _mapping(event, "session")
        expires_at = session.get("expires_at")
        if expires_at is not None:
            if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
                raise MalformedEvent("field 'session.expires_at' is not a number")
            try:
                expires = float(expires_at)
            except OverflowError:  # JSON allows any integer
                expires = math.inf
            if not math.isfinite(expires):
                raise MalformedEvent("field 'session.expires_at' is not a finite time")
            self._deadline = self._clock() + (expires - self._wall_clock())
        self.session = session
        if event["type"] == "session.updated" and not self.ready:
            self.ready = True
            self._update_pending = False
            return [SessionReady(session)]
        return []

    def _on_error(self, event: Mapping[str, Any]) -> list[Action]:
        error = event.get("error")
        if not isinstance(error, Mapping):
            error = {}
        code = _opt_str(error, "code")
        message = _opt_str(error, "message") or "(no message)"
        kind = _opt_str(error, "type") or ""
        if code in BENIGN_ERROR_CODES or TRUNCATE_PAST_END.search(message):
            fatal = False
        elif code == "session_expired" or (self._update_pending and not self.ready):
            fatal = True
        else:
            fatal = any(word in f"{code or ''} {kind}".lower() for word in _AUTH_WORDS)
        return self._error(code, message, fatal=fatal, kind=kind)

    def _on_speech_started(self, event: Mapping[str, Any]) -> list[Action]:
        start_ms = _int(event, "audio_start_ms")
        user_item = _str(event, "item_id")
        actions: list[Action] = []
        books = self._books
        # With interrupt_response the server cancels whatever it is still generating; its late deltas
        # describe a reply nobody will hear.
        if self.active_response_id is not None:
            books.interrupted_responses.add(self.active_response_id)
        playing = self._playback.current_item()
        if playing is not None:
            actions.append(FlushPlayback(playing))
            if playing in books.interrupted_items:  # already cut and reported; the flush is still due
                actions.append(SpeechStarted(start_ms, user_item))
                return actions
            books.interrupted_items.add(playing)
            played = min(self._playback.played_samples(playing), books.received.get(playing, 0))
            heard_ms = max(played, 0) // SAMPLES_PER_MS
            if heard_ms > 0:  # nothing heard: an item with no audio cannot be truncated (and need not be)
                actions.append(Send(truncate(playing, heard_ms)))
            log_event(log, "barge_in", "visitor spoke over item %s after %d ms of it", playing, heard_ms,
                      ITEM_ID=playing, AUDIO_END_MS=heard_ms)
        actions.append(SpeechStarted(start_ms, user_item))
        return actions

    def _on_speech_stopped(self, event: Mapping[str, Any]) -> list[Action]:
        return [SpeechStopped(_int(event, "audio_end_ms"), _str(event, "item_id"))]

    def _on_response_created(self, event: Mapping[str, Any]) -> list[Action]:
        response_id = _str(_mapping(event, "response"), "id")
        self.active_response_id = response_id
        return [ResponseStarted(response_id)]

    def _on_audio_delta(self, event: Mapping[str, Any]) -> list[Action]:
        item_id = _str(event, "item_id")
        response_id = _str(event, "response_id")
        pcm = _pcm(event, "delta")
        books = self._books
        if item_id in books.interrupted_items or response_id in books.interrupted_responses or not pcm:
            return []
        books.received[item_id] = books.received.get(item_id, 0) + len(pcm) // BYTES_PER_SAMPLE
        return [PlayAudio(item_id, response_id, pcm)]

    def _on_assistant_transcript(self, event: Mapping[str, Any]) -> list[Action]:
        return [Transcript("assistant", _str(event, "item_id"), _str(event, "transcript"))]

    def _on_assistant_text(self, event: Mapping[str, Any]) -> list[Action]:
        return [Transcript("assistant", _str(event, "item_id"), _str(event, "text"))]

    def _on_user_transcript(self, event: Mapping[str, Any]) -> list[Action]:
        return [Transcript("user", _str(event, "item_id"), _str(event, "transcript"))]

    def _on_transcription_failed(self, event: Mapping[str, Any]) -> list[Action]:
        error = event.get("error")
        error = error if isinstance(error, Mapping) else {}
        message = _opt_str(error, "message") or "(no message)"
        return self._error(_opt_str(error, "code"), f"user transcription failed: {message}", fatal=False,
                           kind="transcription")

    def _on_response_done(self, event: Mapping[str, Any]) -> list[Action]:
        response = _mapping(event, "response")
        response_id = _str(response, "id")
        status = _opt_str(response, "status") or "completed"
        if self.active_response_id == response_id:
            self.active_response_id = None
        actions: list[Action] = []
        try:
            usage = _usage(response_id, response.get("usage"))
        except MalformedEvent as exc:  # the response still ended: say so, whatever its bill looked like
            actions += self._error("malformed_event", f"response.done: {exc}", fatal=False)
        else:
            if usage is not None:
                self.usage = self.usage.plus(usage)
                actions.append(usage)
        actions.append(ResponseDone(response_id, status, _done_reason(response.get("status_details"))))
        return actions

    def _on_truncated(self, event: Mapping[str, Any]) -> list[Action]:
        return [Truncated(_str(event, "item_id"), _int(event, "audio_end_ms"))]

    _HANDLERS: ClassVar[dict[str, Callable[[RealtimeSession, Mapping[str, Any]], list[Action]]]] = {
        "session.created": _on_session,
        "session.updated": _on_session,
        "error": _on_error,
        "input_audio_buffer.speech_started": _on_speech_started,
        "input_audio_buffer.speech_stopped": _on_speech_stopped,
        "response.created": _on_response_created,
        "response.output_audio.delta": _on_audio_delta,
        "response.output_audio_transcript.done": _on_assistant_transcript,
        "response.output_text.done": _on_assistant_text,
        "conversation.item.input_audio_transcription.completed": _on_user_transcript,
        "conversation.item.input_audio_transcription.failed": _on_transcription_failed,
        "response.done": _on_response_done,
        "conversation.item.truncated": _on_truncated,
    }

    # -- helpers ---------------------------------------------------------------------------------------

    def _error(self, code: str | None, message: str, *, fatal: bool, kind: str | None = None) -> list[Action]:
        log_event(log, "error", "realtime %s%s: %s", "fatal error" if fatal else "error",
                  f" {code}" if code else "", message, level=logging.ERROR if fatal else logging.WARNING,
                  ERROR_CODE=code, ERROR_TYPE=kind or None, FATAL=str(fatal).lower())
        actions: list[Action] = [ServerError(code, message, fatal)]
        if fatal:
            actions += self._end(f"server error {code}: {message}" if code else f"server error: {message}")
        return actions

    def _end(self, reason: str) -> list[Action]:
        self.ended = reason
        return [SessionEnded(reason)]


def _mapping(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = event.get(name)
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"field {name!r} is not an object")
    return value


def _str(event: Mapping[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str):
        raise MalformedEvent(f"field {name!r} is not a string")
    return value


def _opt_str(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    return value if isinstance(value, str) else None


def _int(event: Mapping[str, Any], name: str) -> int:
    value = event.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"field {name!r} is not an integer")
    return value


def _pcm(event: Mapping[str, Any], name: str) -> bytes:
    text = _str(event, name)
    try:
        pcm = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEvent(f"field {name!r} is not valid base64") from None
    if len(pcm) % BYTES_PER_SAMPLE:
        raise MalformedEvent(f"field {name!r} holds {len(pcm)} bytes, not whole 16-bit samples")
    return pcm


MAX_TOKENS = 10**9
"""More tokens than any response can bill (the model's context is 32k): a count above this is a broken event,
and pricing it would overflow a float."""


def _count(details: Mapping[str, Any], name: str, where: str) -> int:
    value = details.get(name, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TOKENS:
        raise MalformedEvent(f"usage field '{where}.{name}' is not a token count")
    return value


def _details(usage: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = usage.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"usage field {name!r} is not an object")
    return value


def _usage(response_id: str, usage: Any) -> Usage | None:
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        raise MalformedEvent("field 'usage' is not an object")
    inputs = _details(usage, "input_token_details")
    cached = _details(inputs, "cached_tokens_details")
    outputs = _details(usage, "output_token_details")
    return Usage(
        response_id,
        text_in=_count(inputs, "text_tokens", "input_token_details"),
        audio_in=_count(inputs, "audio_tokens", "input_token_details"),
        cached_text_in=_count(cached, "text_tokens", "cached_tokens_details"),
        cached_audio_in=_count(cached, "audio_tokens", "cached_tokens_details"),
        text_out=_count(outputs, "text_tokens", "output_token_details"),
        audio_out=_count(outputs, "audio_tokens", "output_token_details"),
    )


def _done_reason(details: Any) -> str | None:
    """``turn_detected`` / ``client_cancelled`` / ``max_output_tokens`` / …, or a failed response's error."""
    if not isinstance(details, Mapping):
        return None
    reason = _opt_str(details, "reason")
    if reason:
        return reason
    error = details.get("error")
    if isinstance(error, Mapping):
        return _opt_str(error, "code") or _opt_str(error, "type") or _opt_str(error, "message")
    return None
