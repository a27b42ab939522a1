"""The simulator's protocol core: one realtime session as a state machine with no I/O.

Feed it what the client sent (``receive(frame, now)``) and the passing of time (``poll(now)``); it returns the
server events to send, in order, and possibly a ``Close``. ``next_deadline()`` says when something is next due
(a paced audio chunk, a transcription, the session cap), so a driver sleeps exactly until then. Time is whatever
clock the caller passes, which makes every behaviour testable with a virtual clock and no sockets.

What it imitates, from reference/realtime-protocol.md: the session object and its defaults (§3.2, §3.8),
every GA client event (§3.3) with the service's error texts (§5.7), server VAD turns (§3.6), responses streamed
faster than real time with interleaved transcript and audio deltas (§3.6), barge-in cancellation and its event
tail (§4.1, §4.5), truncation rules (§4.3), token usage and prompt caching (§5.3, §5.4) and the session time cap
(§5.1).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import random
import string
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kioskd.sim import schema
from kioskd.sim.conversation import ItemState, PartState
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.pacing import Chunk, fit_reply, plan_reply
from kioskd.sim.records import ResponseRecord, SessionRecord, Truncation
from kioskd.sim.schema import ClientError
from kioskd.sim.session import apply_update, default_session, session_cap_reason
from kioskd.sim.usage import (
    PromptCache,
    Segment,
    Tokens,
    Usage,
    assistant_audio_tokens,
    text_tokens,
)
from kioskd.sim.vad import BYTES_PER_MS, EnergyVad, SpeechStarted, VadEvent
from kioskd.sim.voice import ReplyVoice

ServerEvent = dict[str, Any]


@dataclass(frozen=True)
class Close:
    """Close the WebSocket with this code and reason (after sending what came before it)."""

    code: int
    reason: str


Output = ServerEvent | Close

MAX_APPEND_CHARS = 15 * 1024 * 1024
MIN_COMMIT_MS = 100
SEMANTIC_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}
RATE_WINDOW_S = 60.0
SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! You can retry your request, or "
    "contact us through our help center at aoai-realtimeapi-dri@microsoft.com if the error persists. "
    "(Please include the session ID {session_id} in your message.)"
)
RATE_LIMIT_MESSAGE = "Rate limit reached for tokens. Please try again in 2s."
_ID_ALPHABET = string.ascii_letters + string.digits


@dataclass
class _Response:
    id: str
    in_conversation: bool
    modality: str  # "audio" | "text"
    voice: str
    audio_format: dict[str, Any]
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    item: ItemState
    chunks: deque[Chunk]
    done_at: float
    final_status: str
    final_reason: str | None
    prompt: Tokens
    cached: Tokens
    sent_text: str = ""
    sent_audio_bytes: int = 0


class SimCore:
    """One realtime session. Not thread-safe; one driver feeds it in order."""

    def __init__(
        self,
        options: SimOptions,
        *,
        model: str,
        now: float,
        wall_now: float,
        voice: ReplyVoice,
        prompt_cache: PromptCache | None = None,
        flavour: str = "azure",
        auth: str = "api-key",
        faults: Faults | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._opt = options
        self._voice = voice
        self._cache = prompt_cache if prompt_cache is not None else PromptCache()
        self._faults = faults or Faults()
        self._rng = rng or random.Random(options.seed)
        self._now = now
        self._expires_mono = now + options.session_cap_s
        expires_at = int(wall_now + options.session_cap_s)
        session_id = self._new_id("sess")
        self.session = default_session(session_id, model, expires_at)
        self.record = SessionRecord(session_id, model, flavour, auth, expires_at)
        self._conversation_id = self._new_id("conv")
        self._items: list[ItemState] = []
        self._buffer_start = 0  # byte offset into record.input_pcm where the uncommitted buffer begins
        self._vad = EnergyVad()
        self._vad_enabled = True
        self._configure_vad()
        self._speech_item_id: str | None = None
        self._speech_start_ms = 0
        self._responses: dict[str, _Response] = {}
        self._default_response: str | None = None
        self._auto_response_pending = False
        self._reply_count = 0
        self._transcript_count = 0
        self._transcriptions: list[tuple[float, str, str]] = []
        self._assistant_audio_sent = False
        self._token_log: deque[tuple[float, int]] = deque()
        self.closed = False

    # --- driver interface ---------------------------------------------------------------------------

    def start(self) -> list[Output]:
        return [self._event("session.created", session=copy.deepcopy(self.session))]

    def receive(self, frame: str | bytes, now: float) -> list[Output]:
        """One WebSocket message from the client."""
        if self.closed:
            return []
        out = self._advance(now)
        client_event_id: str | None = None
        try:
            data = self._decode(frame)
            if self._opt.keep_event_log:
                self.record.client_events.append(data)
            event_id = data.get("event_id")
            client_event_id = event_id if isinstance(event_id, str) else None
            out += self._dispatch(schema.parse_client_event(data))
        except ClientError as err:
            out.append(self._error(err, client_event_id))
        return out

    def poll(self, now: float) -> list[Output]:
        """Whatever has come due by ``now``."""
        if self.closed:
            return []
        return self._advance(now)

    def next_deadline(self) -> float | None:
        if self.closed:
            return None
        times = [self._expires_mono]
        times += [r.chunks[0].due if r.chunks else r.done_at for r in self._responses.values()]
        times += [due for due, _, _ in self._transcriptions]
        return min(times)

    def fault_error_event(self, code: str) -> ServerEvent:
        """An ``error`` event as the service sends for internal trouble (fault injection)."""
        if code == "rate_limit_exceeded":
            error_type, message = "rate_limit_error", RATE_LIMIT_MESSAGE
        elif code == "session_expired":  # the beta-era form of the session cap (§3.8)
            error_type, message = "invalid_request_error", session_cap_reason(self._opt.session_cap_s)
        else:
            error_type, message = "server_error", SERVER_ERROR_MESSAGE.format(session_id=self.record.session_id)
        return self._error(ClientError(message, code=code, error_type=error_type, echo_event_id=False), None)

    @property
    def active_response_id(self) -> str | None:
        return self._default_response

    # --- plumbing ------------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return prefix + "_" + "".join(self._rng.choice(_ID_ALPHABET) for _ in range(21))

    def _event(self, event_type: str, **fields: Any) -> ServerEvent:
        return {"type": event_type, "event_id": self._new_id("event"), **fields}

    def _error(self, err: ClientError, client_event_id: str | None) -> ServerEvent:
        return self._event(
            "error",
            error={
                "type": err.error_type,
                "code": err.code,
                "message": err.message,
                "param": err.param,
                "event_id": client_event_id if err.echo_event_id else None,
            },
        )

    @staticmethod
    def _decode(frame: str | bytes) -> dict[str, Any]:
        if isinstance(frame, bytes):
            raise ClientError(
                "Binary frames are not supported: send each event as JSON in a text frame.", code="invalid_json"
            )
        try:
            data = json.loads(frame)
        except (ValueError, RecursionError):
            raise ClientError(
                "We could not parse the JSON body of your request. Send each event as one JSON object.",
                code="invalid_json",
            ) from None
        if not isinstance(data, dict):
            raise ClientError(
                f"Invalid type for event: expected an object, but got {schema.json_kind(data)} instead.",
                code="invalid_type",
            )
        return data

    def _dispatch(self, event: Any) -> list[Output]:
        handlers: dict[str, Callable[[Any], list[Output]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._truncate,
            "conversation.item.delete": self._delete,
            "conversation.item.retrieve": self._retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }
        return handlers[event.type](event)

    def _advance(self, now: float) -> list[Output]:
        self._now = max(self._now, now)
        out: list[Output] = []
        while True:
            due, action = self._next_due()
            if action is None or due > self._now:
                break
            out += action()
        if self._now >= self._expires_mono:
            self.closed = True
            out.append(Close(1001, session_cap_reason(self._opt.session_cap_s)))
        return out

    def _next_due(self) -> tuple[float, Any]:
        best: tuple[float, Any] = (float("inf"), None)
        for resp in self._responses.values():
            if resp.chunks:
                candidate = (resp.chunks[0].due, lambda r=resp: self._send_chunk(r))
            else:
                candidate = (resp.done_at, lambda r=resp: self._finish(r, r.final_status, r.final_reason))
            if candidate[0] < best[0]:
                best = candidate
        for index, (due, _, _) in enumerate(self._transcriptions):
            if due < best[0]:
                best = (due, lambda i=index: self._send_transcription(i))
        return best

    def _find(self, item_id: str) -> tuple[int, ItemState] | tuple[None, None]:
        for index, item in enumerate(self._items):
            if item.id == item_id:
                return index, item
        return None, None

    def _previous_id(self, item: ItemState) -> str | None:
        index, _ = self._find(item.id)
        return self._items[index - 1].id if index else None

    def _last_item_id(self) -> str | None:
        return self._items[-1].id if self._items else None

    @property
    def _turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.session["audio"]["input"]["turn_detection"]
        return td

    def _configure_vad(self) -> None:
        td = self._turn_detection
        was_enabled = self._vad_enabled
        self._vad_enabled = td is not None
        if td is None:
            return
        if td["type"] == "semantic_vad":
            self._vad.configure(0.5, 300, SEMANTIC_SILENCE_MS[td["eagerness"]])
        else:
            self._vad.configure(td["threshold"], td["prefix_padding_ms"], td["silence_duration_ms"])
        if not was_enabled:
            self._vad.reset()

    # --- session -------------------------------------------------------------------------------------

    def _session_update(self, event: schema.SessionUpdate) -> list[Output]:
        params = event.session
        model = self.session["model"]
        if params.type == "transcription":
            raise ClientError(
                "Passing a transcription session update event to a realtime session is not allowed.",
                code="invalid_parameter",
                param="session.type",
            )
        if params.model is not None and params.model != model:
            raise ClientError(
                f"Invalid value: '{params.model}'. The model of a session cannot be changed (it is '{model}').",
                code="invalid_value",
                param="session.model",
            )
        reasoning_model = model.startswith("gpt-realtime-2")
        if params.reasoning is not None and not reasoning_model:
            raise ClientError(
                f"Invalid value: reasoning is not supported with model '{model}'.",
                code="invalid_value",
                param="session.reasoning",
                echo_event_id=False,
            )
        if params.parallel_tool_calls and not reasoning_model:
            raise ClientError(
                f"Invalid value: parallel_tool_calls=true is not supported with model '{model}'.",
                code="invalid_value",
                param="session.parallel_tool_calls",
                echo_event_id=False,
            )
        self._check_common(params, "session")
        output = params.audio.output if params.audio else None
        if output is not None and "voice" in output.model_fields_set and self._assistant_audio_sent:
            raise ClientError(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        new = apply_update(self.session, params)
        self.session = new
        self._configure_vad()
        return [self._event("session.updated", session=copy.deepcopy(self.session))]

    @staticmethod
    def _check_common(params: schema.SessionParams | schema.ResponseParams, root: str) -> None:
        if params.max_output_tokens is not None:
            schema.check_max_output_tokens(params.max_output_tokens, f"{root}.max_output_tokens")
        if params.tool_choice is not None:
            schema.check_tool_choice(params.tool_choice, f"{root}.tool_choice")
        if params.output_modalities is not None:
            schema.check_modalities(params.output_modalities, f"{root}.output_modalities")
        if isinstance(params, schema.SessionParams):
            if params.truncation is not None:
                schema.check_truncation(params.truncation, f"{root}.truncation")
            if params.tracing is not None:
                schema.check_tracing(params.tracing, f"{root}.tracing")
        audio = params.audio
        formats: list[tuple[str, Any]] = []
        if isinstance(audio, schema.AudioConfig):
            if audio.input is not None:
                formats.append((f"{root}.audio.input.format", audio.input.format))
            if audio.output is not None:
                formats.append((f"{root}.audio.output.format", audio.output.format))
        elif audio is not None and audio.output is not None:
            formats.append((f"{root}.audio.output.format", audio.output.format))
        for path, fmt in formats:
            if fmt is not None and fmt.type != "audio/pcm":
                raise ClientError(
                    f"Invalid value: '{fmt.type}'. The kioskd simulator supports only audio/pcm at 24000 Hz.",
                    code="invalid_value",
                    param=f"{path}.type",
                )

    # --- input audio -----------------------------------------------------------------------------------

    def _append(self, event: schema.AudioAppend) -> list[Output]:
        if len(event.audio) > MAX_APPEND_CHARS:
            raise ClientError(
                f"Invalid 'audio': string too long. Expected a string with maximum length {MAX_APPEND_CHARS}, "
                f"but got a string with length {len(event.audio)} instead.",
                code="string_above_max_length",
                param="audio",
            )
        try:
            pcm = base64.b64decode(event.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ClientError(
                "Invalid 'audio': expected base64-encoded audio.", code="invalid_value", param="audio"
            ) from None
        if len(pcm) % 2:
            raise ClientError(
                f"Invalid 'audio': PCM16 audio must be a whole number of 16-bit samples, got {len(pcm)} bytes.",
                code="invalid_value",
                param="audio",
            )
        self.record.input_pcm += pcm
        out: list[Output] = []
        for vad_event in self._vad.feed(pcm):
            if self._vad_enabled:
                out += self._on_vad(vad_event)
        return out

    def _on_vad(self, vad_event: VadEvent) -> list[Output]:
        td = self._turn_detection or {}
        if isinstance(vad_event, SpeechStarted):
            item_id = self._new_id("item")
            self._speech_item_id = item_id
            self._speech_start_ms = vad_event.audio_start_ms
            out: list[Output] = [
                self._event(
                    "input_audio_buffer.speech_started", audio_start_ms=vad_event.audio_start_ms, item_id=item_id
                )
            ]
            active = self._responses.get(self._default_response or "")
            if active is not None and td.get("interrupt_response", True):
                out += self._finish(active, "cancelled", "turn_detected")
            return out
        item_id = self._speech_item_id or self._new_id("item")
        self._speech_item_id = None
        out = [
            self._event("input_audio_buffer.speech_stopped", audio_end_ms=vad_event.audio_end_ms, item_id=item_id)
        ]
        start = max(self._speech_start_ms * BYTES_PER_MS, self._buffer_start)
        end = vad_event.audio_end_ms * BYTES_PER_MS
        pcm = bytes(self.record.input_pcm[start:end])
        self._buffer_start = max(self._buffer_start, end)
        out += self._commit_user_audio(item_id, pcm)
        if td.get("create_response", True):
            if self._default_response is None:
                out += self._start_response(None)
            else:
                self._auto_response_pending = True
        return out

    def _commit(self, event: schema.AudioCommit) -> list[Output]:
        pending_ms = (len(self.record.input_pcm) - self._buffer_start) / BYTES_PER_MS
        if pending_ms < MIN_COMMIT_MS:
            raise ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {pending_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id or self._new_id("item")
        self._speech_item_id = None
        pcm = bytes(self.record.input_pcm[self._buffer_start :])
        self._buffer_start = len(self.record.input_pcm)
        self._vad.reset()
        return self._commit_user_audio(item_id, pcm)

    def _clear(self, event: schema.AudioClear) -> list[Output]:
        self._buffer_start = len(self.record.input_pcm)
        self._speech_item_id = None
        self._vad.reset()
        return [self._event("input_audio_buffer.cleared")]

    def _commit_user_audio(self, item_id: str, pcm: bytes) -> list[Output]:
        item = ItemState(item_id, "message", "user", "completed", [PartState("input_audio", audio=bytearray(pcm))])
        previous = self._last_item_id()
        self._items.append(item)
        self.record.user_turns.append(pcm)
        out: list[Output] = [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event("conversation.item.added", previous_item_id=previous, item=item.wire()),
            self._event("conversation.item.done", previous_item_id=previous, item=item.wire()),
        ]
        if self.session["audio"]["input"]["transcription"] is not None:
            texts = self._opt.user_transcripts
            text = texts[self._transcript_count % len(texts)]
            self._transcript_count += 1
            self._transcriptions.append((self._now + self._opt.transcription_delay_s, item_id, text))
        return out

    def _send_transcription(self, index: int) -> list[Output]:
        _, item_id, text = self._transcriptions.pop(index)
        _, item = self._find(item_id)
        if item is None:  # deleted meanwhile: nothing to report on
            return []
        item.parts[0].transcript = text
        seconds = round(item.parts[0].audio_ms / 1000, 3)
        return [
            self._event(
                "conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0, delta=text
            ),
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": seconds},
            ),
        ]

    # --- conversation items ----------------------------------------------------------------------------

    def _build_item(self, model: Any) -> ItemState:
        item_id = model.id or self._new_id("item")
        if isinstance(model, schema.MessageItem):
            parts = []
            for p in model.content:
                part = PartState(p.type)
                if isinstance(p, schema.InputTextPart | schema.OutputTextPart):
                    part.text = p.text
                elif isinstance(p, schema.InputAudioPart):
                    part.transcript = p.transcript
                    part.audio = bytearray(_decode_audio(p.audio))
                elif isinstance(p, schema.InputImagePart):
                    part.image_url, part.detail = p.image_url, p.detail
                parts.append(part)
            return ItemState(item_id, "message", model.role, "completed", parts)
        if isinstance(model, schema.FunctionCallItem):
            call_id = model.call_id or self._new_id("call")
            return ItemState(item_id, "function_call", call_id=call_id, name=model.name, arguments=model.arguments)
        return ItemState(item_id, "function_call_output", call_id=model.call_id, output=model.output)

    def _item_create(self, event: schema.ItemCreate) -> list[Output]:
        schema.check_item_roles(event.item, "item")
        item = self._build_item(event.item)
        if self._find(item.id)[1] is not None:
            raise ClientError(
                f"Error adding item: an item with id '{item.id}' already exists.",
                code="item_create_duplicate_item_id",
                param="item.id",
            )
        previous = event.previous_item_id
        if previous is None:
            index = len(self._items)
        elif previous == "root":
            index = 0
        else:
            found, _ = self._find(previous)
            if found is None:
                raise ClientError(
                    f"Error adding item: the previous item with id '{previous}' does not exist.",
                    code="item_create_invalid_previous_item_id",
                    param="previous_item_id",
                )
            index = found + 1
        self._items.insert(index, item)
        before = self._items[index - 1].id if index else None
        return [
            self._event("conversation.item.added", previous_item_id=before, item=item.wire()),
            self._event("conversation.item.done", previous_item_id=before, item=item.wire()),
        ]

    def _truncate(self, event: schema.ItemTruncate) -> list[Output]:
        _, item = self._find(event.item_id)
        if item is None:
            self._note_truncation(event, None, "unknown item")
            raise ClientError(
                f"Error truncating item: the item with id '{event.item_id}' does not exist.",
                code="item_truncate_invalid_item_id",
                param="item_id",
            )
        if not item.is_assistant_audio:
            self._note_truncation(event, 0.0, "not assistant audio")
            raise ClientError(
                "Only model output audio messages can be truncated", code="unsupported_content_type"
            )
        if event.content_index != 0:
            self._note_truncation(event, item.parts[0].audio_ms, "bad content_index")
            raise schema.invalid_value("content_index", event.content_index, "0")
        part = item.parts[0]
        length_ms = part.audio_ms
        if event.audio_end_ms > length_ms:
            self._note_truncation(event, length_ms, "past the end")
            raise ClientError(
                f"Audio content of {int(length_ms)}ms is already shorter than {event.audio_end_ms}ms",
                echo_event_id=False,
            )
        assert part.audio is not None
        del part.audio[event.audio_end_ms * BYTES_PER_MS :]
        part.transcript = None  # the service drops the transcript: nothing unheard stays in the context
        self._note_truncation(event, length_ms, None)
        return [
            self._event(
                "conversation.item.truncated",
                item_id=item.id,
                content_index=event.content_index,
                audio_end_ms=event.audio_end_ms,
            )
        ]

    def _note_truncation(self, event: schema.ItemTruncate, length_ms: float | None, error: str | None) -> None:
        self.record.truncations.append(
            Truncation(event.item_id, event.audio_end_ms, length_ms, accepted=error is None, error=error)
        )

    def _delete(self, event: schema.ItemDelete) -> list[Output]:
        index, _ = self._find(event.item_id)
        if index is None:
            raise ClientError(
                f"Error deleting item: the item with id '{event.item_id}' does not exist.",
                code="item_delete_invalid_item_id",
                echo_event_id=False,
            )
        del self._items[index]
        return [self._event("conversation.item.deleted", item_id=event.item_id)]

    def _retrieve(self, event: schema.ItemRetrieve) -> list[Output]:
        _, item = self._find(event.item_id)
        if item is None:
            raise ClientError(
                f"Error retrieving item: the item with id '{event.item_id}' does not exist.",
                code="item_retrieve_invalid_item_id",
            )
        return [self._event("conversation.item.retrieved", item=item.wire(with_audio=True))]

    # --- responses -------------------------------------------------------------------------------------

    def _response_create(self, event: schema.ResponseCreate) -> list[Output]:
        params = event.response or schema.ResponseParams()
        conversation = params.conversation or "auto"
        if conversation not in ("auto", "none"):
            raise schema.invalid_value("response.conversation", conversation, "'auto', 'none'")
        in_conversation = conversation == "auto"
        if in_conversation and self._default_response is not None:
            raise ClientError(
                f"Conversation already has an active response in progress: {self._default_response}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                echo_event_id=False,
            )
        self._check_common(params, "response")
        prompt_items: list[ItemState] | None = None
        if params.input is not None:
            prompt_items = []
            for index, entry in enumerate(params.input):
                if isinstance(entry, schema.ItemReference):
                    _, found = self._find(entry.id)
                    if found is None:
                        raise ClientError(
                            f"Error creating response: the item with id '{entry.id}' does not exist.",
                            code="invalid_value",
                            param=f"response.input[{index}].id",
                        )
                    prompt_items.append(found)
                else:
                    schema.check_item_roles(entry, f"response.input[{index}]")
                    prompt_items.append(self._build_item(entry))
        return self._start_response(params, in_conversation, prompt_items)

    def _response_cancel(self, event: schema.ResponseCancel) -> list[Output]:
        target = event.response_id or self._default_response
        resp = self._responses.get(target) if target else None
        if resp is None:
            raise ClientError("Cancellation failed: no active response found", code="response_cancel_not_active")
        return self._finish(resp, "cancelled", "client_cancelled")

    def _prompt_segments(self, instructions: str, items: list[ItemState]) -> list[Segment]:
        segments = []
        if instructions:
            digest = hashlib.sha256(instructions.encode("utf-8")).hexdigest()[:16]
            segments.append(Segment(f"instructions:{digest}", Tokens(text=text_tokens(instructions))))
        segments += [item.segment() for item in items]
        return segments

    def _start_response(
        self,
        params: schema.ResponseParams | None,
        in_conversation: bool = True,
        prompt_items: list[ItemState] | None = None,
    ) -> list[Output]:
        params = params or schema.ResponseParams()
        session_out = self.session["audio"]["output"]
        override = params.audio.output if params.audio and params.audio.output else None
        modality = (params.output_modalities or self.session["output_modalities"])[0]
        voice = override.voice if override and override.voice else session_out["voice"]
        audio_format = override.format.model_dump() if override and override.format else session_out["format"]
        max_tokens = (
            params.max_output_tokens if params.max_output_tokens is not None else self.session["max_output_tokens"]
        )
        instructions = params.instructions if params.instructions is not None else self.session["instructions"]
        replies = self._opt.replies
        text = replies[self._reply_count % len(replies)]
        self._reply_count += 1
        audio = self._voice.pcm(text, session_out["speed"]) if modality == "audio" else b""
        text, audio, cut = fit_reply(text, audio, max_tokens)
        status, reason = ("incomplete", "max_output_tokens") if cut else ("completed", None)
        segments = self._prompt_segments(instructions, self._items if prompt_items is None else prompt_items)
        prompt = Tokens()
        for segment in segments:
            prompt = prompt + segment.tokens
        cached = self._cache.cached_part(segments)
        item = ItemState(self._new_id("item"), "message", "assistant", "in_progress")
        chunks, done_at = plan_reply(
            text, audio, start=self._now + self._opt.first_delta_delay_s, speed=self._opt.speed, rng=self._rng
        )
        resp = _Response(
            id=self._new_id("resp"),
            in_conversation=in_conversation,
            modality=modality,
            voice=voice,
            audio_format=audio_format,
            max_output_tokens=max_tokens,
            metadata=params.metadata,
            item=item,
            chunks=chunks,
            done_at=done_at,
            final_status=status,
            final_reason=reason,
            prompt=prompt,
            cached=cached,
        )
        out: list[Output] = [
            self._event("response.created", response=self._response_wire(resp, "in_progress")),
            self._rate_limits_event(),
        ]
        if self._faults.fail_responses:
            return out + self._fail(resp, self._faults.fail_responses)
        self._responses[resp.id] = resp
        if in_conversation:
            self._default_response = resp.id
        out.append(self._event("response.output_item.added", response_id=resp.id, output_index=0, item=item.wire()))
        if in_conversation:
            previous = self._last_item_id()
            self._items.append(item)
            out.append(self._event("conversation.item.added", previous_item_id=previous, item=item.wire()))
        if modality == "audio":
            item.parts.append(PartState("output_audio", transcript="", audio=bytearray()))
            part_wire: dict[str, Any] = {"type": "audio", "transcript": ""}
        else:
            item.parts.append(PartState("output_text", text=""))
            part_wire = {"type": "text", "text": ""}
        out.append(self._part_event("response.content_part.added", resp, part=part_wire))
        return out

    def _part_event(self, event_type: str, resp: _Response, **fields: Any) -> ServerEvent:
        return self._event(
            event_type, response_id=resp.id, item_id=resp.item.id, output_index=0, content_index=0, **fields
        )

    def _send_chunk(self, resp: _Response) -> list[Output]:
        chunk = resp.chunks.popleft()
        part = resp.item.parts[0]
        out: list[Output] = []
        if chunk.text:
            resp.sent_text += chunk.text
            if resp.modality == "audio":
                part.transcript = resp.sent_text
                obfuscation = "".join(self._rng.choice(_ID_ALPHABET) for _ in range(12))
                out.append(
                    self._part_event(
                        "response.output_audio_transcript.delta", resp, delta=chunk.text, obfuscation=obfuscation
                    )
                )
            else:
                part.text = resp.sent_text
                out.append(self._part_event("response.output_text.delta", resp, delta=chunk.text))
        if chunk.audio:
            assert part.audio is not None
            part.audio += chunk.audio
            resp.sent_audio_bytes += len(chunk.audio)
            self._assistant_audio_sent = True
            delta = base64.b64encode(chunk.audio).decode("ascii")
            out.append(self._part_event("response.output_audio.delta", resp, delta=delta))
        return out

    def _finish(self, resp: _Response, status: str, reason: str | None) -> list[Output]:
        """The closing events of a response: on completion, cancellation or the token limit (§3.6, §4.5)."""
        text = resp.sent_text
        out: list[Output] = []
        if resp.modality == "audio":
            out.append(self._part_event("response.output_audio.done", resp))
            out.append(self._part_event("response.output_audio_transcript.done", resp, transcript=text))
            out.append(self._part_event("response.content_part.done", resp, part={"type": "audio", "transcript": text}))
        else:
            out.append(self._part_event("response.output_text.done", resp, text=text))
            out.append(self._part_event("response.content_part.done", resp, part={"type": "text", "text": text}))
        resp.item.status = "completed" if status == "completed" else "incomplete"
        out.append(
            self._event("response.output_item.done", response_id=resp.id, output_index=0, item=resp.item.wire())
        )
        if resp.in_conversation and self._find(resp.item.id)[1] is not None:
            out.append(
                self._event(
                    "conversation.item.done", previous_item_id=self._previous_id(resp.item), item=resp.item.wire()
                )
            )
        audio_ms = resp.sent_audio_bytes / BYTES_PER_MS
        usage = Usage(
            input=resp.prompt,
            cached=resp.cached,
            output=Tokens(text=text_tokens(text), audio=assistant_audio_tokens(audio_ms)),
        )
        details = None if status == "completed" else {"type": status, "reason": reason}
        wire = self._response_wire(resp, status, details, [resp.item.wire()], usage.to_wire())
        out.append(self._event("response.done", response=wire))
        self._account(resp, status, reason, usage, audio_ms)
        if resp.in_conversation and self._auto_response_pending:
            self._auto_response_pending = False
            out += self._start_response(None)
        return out

    def _fail(self, resp: _Response, code: str) -> list[Output]:
        error: dict[str, Any]
        if code == "rate_limit_exceeded":
            error = {"type": "rate_limit_error", "code": code, "message": RATE_LIMIT_MESSAGE}
        else:
            message = SERVER_ERROR_MESSAGE.format(session_id=self.record.session_id)
            error = {"type": "server_error", "code": None, "message": message}
        details = {"type": "failed", "error": error}
        out: list[Output] = [self._event("response.done", response=self._response_wire(resp, "failed", details))]
        self._account(resp, "failed", None, Usage(), 0.0)
        return out

    def _account(self, resp: _Response, status: str, reason: str | None, usage: Usage, audio_ms: float) -> None:
        self._responses.pop(resp.id, None)
        if self._default_response == resp.id:
            self._default_response = None
        self.record.usage = self.record.usage + usage
        self.record.responses.append(
            ResponseRecord(resp.id, status, reason, resp.sent_text, audio_ms, usage, resp.in_conversation)
        )
        self._token_log.append((self._now, usage.total_tokens))

    def _response_wire(
        self,
        resp: _Response,
        status: str,
        details: dict[str, Any] | None = None,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": details,
            "output": output or [],
            "conversation_id": self._conversation_id if resp.in_conversation else None,
            "output_modalities": [resp.modality],
            "max_output_tokens": resp.max_output_tokens,
            "audio": {"output": {"format": resp.audio_format, "voice": resp.voice}},
            "usage": usage,
            "metadata": resp.metadata,
        }

    def _rate_limits_event(self) -> ServerEvent:
        while self._token_log and self._token_log[0][0] < self._now - RATE_WINDOW_S:
            self._token_log.popleft()
        limit = self._opt.rate_limit_tokens
        used = sum(tokens for _, tokens in self._token_log)
        reset = round(RATE_WINDOW_S * min(used, limit) / limit, 3) if limit else 0.0
        return self._event(
            "rate_limits.updated",
            rate_limits=[{"name": "tokens", "limit": limit, "remaining": max(0, limit - used), "reset_seconds": reset}],
        )


def _decode_audio(data: str | None) -> bytes:
    if not data:
        return b""
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(
            "Invalid 'item.content.audio': expected base64-encoded audio.", code="invalid_value"
        ) from None
    return pcm[: len(pcm) - len(pcm) % 2]
