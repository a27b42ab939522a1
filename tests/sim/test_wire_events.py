"""Every server event of a busy session, validated against the official ``openai`` models.

The session holds a spoken turn, a barge-in, truncations (accepted and refused), item operations, response
races and bad client events, so that each kind of event and error the simulator sends is checked.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from kioskd.sim import SimServer
from tests.sim.conftest import (
    KEY,
    append_event,
    events_until,
    fast_options,
    silence,
    speech,
    validate_server_event,
    ws_url,
)

pytestmark = pytest.mark.asyncio


async def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(event))


async def stream(ws: ClientConnection, pcm: bytes, chunk_ms: int = 100) -> None:
    for i in range(0, len(pcm), chunk_ms * 48):
        await send(ws, append_event(pcm[i : i + chunk_ms * 48]))


async def test_all_server_events_of_a_busy_session_match_the_sdk_models() -> None:
    async with SimServer(fast_options(speed=1.0)) as sim:
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}, max_size=None, max_queue=None) as ws:
            await send(ws, {"type": "session.update", "session": {"type": "realtime", "audio": {
                "input": {"transcription": {"model": "whisper-1"},
                          "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                "output": {"voice": "marin"}}}})
            await stream(ws, silence(500) + speech("Hello, where is the information desk, please?") + silence(800))
            events = await events_until(ws, "response.output_audio.delta")
            assistant = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
            user = next(e for e in events if e["type"] == "input_audio_buffer.committed")["item_id"]
            # Barge in while the reply is still being generated.
            await stream(ws, speech("Sorry, which floor?") + silence(800))
            events += await events_until(ws, "response.done")
            cancelled = events[-1]["response"]
            assert (cancelled["status"], cancelled["status_details"]["reason"]) == ("cancelled", "turn_detected")
            received_ms = sum(
                len(base64.b64decode(e["delta"])) / 48
                for e in events
                if e["type"] == "response.output_audio.delta" and e["item_id"] == assistant
            )
            keep = int(received_ms // 2)
            await send(ws, {"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0,
                            "audio_end_ms": keep})
            assert (await sim.wait_truncation()).accepted
            await send(ws, {"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0,
                            "audio_end_ms": keep + 5000})
            await send(ws, {"type": "conversation.item.truncate", "item_id": user, "content_index": 0,
                            "audio_end_ms": 10})
            # The barge-in turn's reply is generating now: a second one is refused, then cancelled.
            await send(ws, {"type": "response.create"})
            await send(ws, {"type": "response.cancel"})
            await send(ws, {"type": "response.cancel"})
            await send(ws, {"type": "input_audio_buffer.clear"})
            await send(ws, {"type": "input_audio_buffer.commit"})
            await send(ws, {"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks!"}]}})
            await send(ws, {"type": "conversation.item.retrieve", "item_id": assistant})
            await send(ws, {"type": "response.create", "response": {"output_modalities": ["text"]}})
            await send(ws, {"type": "no.such.event"})
            await sim.wait_server_event("response.done", 3)
            await sim.wait_server_event("conversation.item.input_audio_transcription.completed", 2)
            await send(ws, {"type": "conversation.item.delete", "item_id": user})
            await sim.wait_server_event("conversation.item.deleted")
        record = await sim.wait_session_ended()
    for event in record.server_events:
        validate_server_event(event)
    sent = {e["type"] for e in record.server_events}
    assert sent >= {
        "session.created", "session.updated", "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "input_audio_buffer.cleared",
        "conversation.item.added", "conversation.item.done", "conversation.item.truncated",
        "conversation.item.retrieved", "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.completed",
        "response.created", "rate_limits.updated", "response.output_item.added", "response.output_item.done",
        "response.content_part.added", "response.content_part.done", "response.output_audio.delta",
        "response.output_audio.done", "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done", "response.output_text.delta", "response.output_text.done",
        "response.done", "error",
    }
    codes = [e["error"]["code"] for e in record.server_events if e["type"] == "error"]
    assert codes == [
        None,  # truncate past the end
        "unsupported_content_type",
        "conversation_already_has_active_response",
        "response_cancel_not_active",
        "input_audio_buffer_commit_empty",
        "invalid_value",  # no.such.event
    ]
    assert [t.accepted for t in record.truncations] == [True, False, False]
