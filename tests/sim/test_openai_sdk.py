"""The official ``openai`` SDK, as an independent client, holds a full spoken turn with the simulator."""

from __future__ import annotations

import base64
import math
from typing import Any

import pytest
from openai import AsyncOpenAI

from kioskd.sim import SimServer
from tests.sim.conftest import KEY, MODEL, silence, speech

pytestmark = pytest.mark.asyncio


async def test_the_sdk_holds_a_spoken_turn(sim: SimServer) -> None:
    client = AsyncOpenAI(websocket_base_url=f"{sim.url}/openai/v1", api_key=KEY)
    question = silence(400) + speech("Hello, could you tell me when the museum opens?") + silence(1000)
    seen: list[Any] = []
    async with client.realtime.connect(model=MODEL) as conn:
        await conn.session.update(session={
            "type": "realtime",
            "instructions": "You are the voice of this kiosk. Answer briefly.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000},
                          "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
        })
        for i in range(0, len(question), 4800):  # 100 ms appends
            await conn.input_audio_buffer.append(audio=base64.b64encode(question[i : i + 4800]).decode())
        async for event in conn:
            seen.append(event)
            if event.type == "response.done":
                break
    kinds = [e.type for e in seen]
    assert kinds[:2] == ["session.created", "session.updated"]
    assert seen[1].session.audio.output.voice == "marin"
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    audio = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
    assert len(audio) / 48_000 > 2.0
    transcript = "".join(e.delta for e in seen if e.type == "response.output_audio_transcript.delta")
    done = seen[-1].response
    assert done.status == "completed"
    assert transcript == done.output[0].content[0].transcript == sim.options.replies[0]
    assert done.usage.input_token_details.audio_tokens > 0
    assert done.usage.output_token_details.audio_tokens == math.ceil(len(audio) / 48 / 50)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert sim.handshakes[-1].auth == "bearer"
    record = await sim.wait_session_ended()
    assert record.user_turns and record.close_code == 1000
