"""Hypothesis strategies for what a realtime server might send: right, wrong, and nothing like an event.

Events are drawn from the types the protocol core handles (plus unknown and beta-era types), with each field
either plausible (an item id from a small pool so events about the same item meet, valid base64 PCM, a
sensible count) or anything JSON can carry: wrong types, huge integers, NaN and infinities, deep nesting.
Frames add what is not an event at all: broken JSON, JSON that is not an object, binary frames.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

ITEMS = ("item_a", "item_b", "item_c")
RESPONSES = ("resp_1", "resp_2")

huge_ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.integers(min_value=2**1024, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(2**1024)),
)
scalars = st.one_of(
    st.none(), st.booleans(), huge_ints, st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mostly(plausible: st.SearchStrategy[Any], odd: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """``plausible`` nine times in ten, ``odd`` otherwise (Hypothesis's ``one_of`` has no weights)."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda n: plausible if n < 9 else odd)


pcm_bytes = st.integers(min_value=0, max_value=2400).map(lambda n: bytes(2 * n))
deltas = mostly(
    pcm_bytes.map(_b64),  # whole samples, up to 100 ms
    st.one_of(st.binary(max_size=64).map(_b64),  # possibly half a sample
              st.text(max_size=40), st.just("!!!not base64!!!"), json_values),
)
counts = st.integers(min_value=0, max_value=19).flatmap(
    lambda n: st.integers(min_value=0, max_value=5000) if n < 16 else huge_ints if n < 19 else json_values)
usage = mostly(st.fixed_dictionaries({
    "input_token_details": mostly(st.fixed_dictionaries(
        {"text_tokens": counts, "audio_tokens": counts},
        optional={"cached_tokens_details": mostly(st.fixed_dictionaries({"text_tokens": counts,
                                                                          "audio_tokens": counts}))})),
    "output_token_details": mostly(st.fixed_dictionaries({"text_tokens": counts, "audio_tokens": counts})),
}))
responses = mostly(st.fixed_dictionaries(
    {"id": mostly(st.sampled_from(RESPONSES))},
    optional={"status": mostly(st.sampled_from(["completed", "cancelled", "incomplete", "failed"])),
              "usage": usage,
              "status_details": json_values},
))
errors = mostly(st.fixed_dictionaries(
    {},
    optional={"code": mostly(st.sampled_from(["server_error", "session_expired", "invalid_api_key",
                                               "response_cancel_not_active", "token_expired"])),
              "message": mostly(st.text(max_size=60)),
              "type": mostly(st.sampled_from(["server_error", "invalid_request_error", "authentication_error"]))},
))
expiry = st.integers(min_value=1_700_000_000, max_value=1_900_000_000)
sessions = mostly(st.fixed_dictionaries(
    {}, optional={"id": mostly(st.text(max_size=10)),
                  "expires_at": st.integers(min_value=0, max_value=9).flatmap(
                      lambda n: expiry if n < 6 else huge_ints if n < 8 else st.floats(allow_nan=True) | json_values)}))
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "item_id": mostly(st.sampled_from(ITEMS)),
    "response_id": mostly(st.sampled_from(RESPONSES)),
    "delta": deltas,
    "audio_start_ms": counts,
    "audio_end_ms": counts,
    "transcript": mostly(st.text(max_size=40)),
    "text": mostly(st.text(max_size=40)),
    "session": sessions,
    "response": responses,
    "error": errors,
    "content_index": counts,
    "event_id": st.text(max_size=8),
}
TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    "session.created": ("session",),
    "session.updated": ("session",),
    "error": ("error",),
    "input_audio_buffer.speech_started": ("audio_start_ms", "item_id"),
    "input_audio_buffer.speech_stopped": ("audio_end_ms", "item_id"),
    "response.created": ("response",),
    "response.output_audio.delta": ("item_id", "response_id", "delta"),
    "response.audio.delta": ("item_id", "response_id", "delta"),
    "response.output_audio_transcript.done": ("item_id", "transcript"),
    "response.output_text.done": ("item_id", "text"),
    "conversation.item.input_audio_transcription.completed": ("item_id", "transcript"),
    "conversation.item.input_audio_transcription.failed": ("item_id", "error"),
    "response.done": ("response",),
    "conversation.item.truncated": ("item_id", "audio_end_ms"),
    "rate_limits.updated": (),
    "response.output_item.added": ("response_id", "item_id"),
    "totally.unknown.event": ("delta",),
}
EVENT_TYPES = tuple(TYPE_FIELDS)


@st.composite
def events(draw: st.DrawFn) -> Any:
    """One server event: usually a known type with its own fields, each plausible or odd; sometimes
    a field missing or a stray one added; now and then anything at all."""
    roll = draw(st.integers(min_value=0, max_value=19))
    if roll == 0:
        return draw(json_values)
    kind = draw(st.sampled_from(EVENT_TYPES)) if roll > 2 else draw(st.text(max_size=12) | json_values)
    own = TYPE_FIELDS.get(kind, ()) if isinstance(kind, str) else ()
    names = {name for name in own if draw(st.integers(0, 9)) > 0}
    names |= draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=2))
    return {"type": kind, **{name: draw(FIELDS[name]) for name in sorted(names)}}


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    """One WebSocket message: an event as JSON (NaN allowed, as Python writes it), or no event at all."""
    choice = draw(st.integers(min_value=0, max_value=19))
    if choice == 0:
        return draw(st.binary(max_size=40))
    if choice == 1:
        return draw(st.text(max_size=40))
    if choice == 2:
        return "[" * 5000 + "]" * 5000  # deeper than the JSON parser's recursion allows
    return json.dumps(draw(events()))
