"""The realtime client against the simulator (``kioskd.sim``): handshake failures, close codes, a full turn
and a barge-in whose truncation the simulator checks against the audio it really sent."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from openai.types.realtime import RealtimeClientEvent
from pydantic import BaseModel, TypeAdapter

from kioskd.config import RealtimeConfig
from kioskd.realtime.auth import ApiKeyAuth
from kioskd.realtime.client import RealtimeClient, open_session
from kioskd.realtime.session import (
    Action,
    FlushPlayback,
    PlayAudio,
    ResponseDone,
    ServerError,
    SessionEnded,
    SpeechStarted,
    Truncated,
    Usage,
)
from kioskd.realtime.transport import (
    BadRequest,
    CredentialsRejected,
    DeploymentNotFound,
    Forbidden,
    RateLimited,
    ServerUnreachable,
)
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.server import SimServer

pytestmark = pytest.mark.asyncio
API_KEY = "sim-key-5a4b3c2d1e0f"
WAIT_S = 30.0
RATE = 24_000
REPLY = ("Welcome to the museum. The main hall is straight ahead, the cafe is on the first floor, and the "
         "cloakroom is next to the stairs on your right.")


class VirtualSpeaker:
    """The daemon's playback as the core sees it: queued items, and samples "played" as the test decides.

    The test plays nothing in real time: it declares how much of an item the device has consumed, which is
    exactly what a barge-in must report, independent of the machine's speed.
    """

    def __init__(self) -> None:
        self.queued: dict[str, int] = {}  # samples received per item
        self.played: dict[str, int] = {}
        self.playing: str | None = None
        self.flushed: list[str] = []
        self.after_flush: list[PlayAudio] = []
        self.changed = asyncio.Condition()

    def current_item(self) -> str | None:
        return self.playing

    def played_samples(self, item_id: str) -> int:
        return self.played.get(item_id, 0)

    async def take(self, action: Action) -> None:
        async with self.changed:
            if isinstance(action, PlayAudio):
                if action.item_id in self.flushed:
                    self.after_flush.append(action)
                self.queued[action.item_id] = self.queued.get(action.item_id, 0) + len(action.pcm) // 2
                self.playing = self.playing or action.item_id
            elif isinstance(action, FlushPlayback):
                self.flushed.append(action.item_id)
                self.playing = None
            self.changed.notify_all()

    async def wait_queued(self, samples: int) -> str:
        """The first item, once at least ``samples`` of it have arrived."""
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: any(n >= samples for n in self.queued.values()))
        return next(item for item, n in self.queued.items() if n >= samples)


def tone(seconds: float, amplitude: float = 0.3, freq: float = 220.0) -> bytes:
    count = int(RATE * seconds)
    peak = amplitude * 32767
    return struct.pack(f"<{count}h", *(int(peak * math.sin(2 * math.pi * freq * i / RATE)) for i in range(count)))


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(RATE * seconds)


def config(sim: SimServer, **overrides: Any) -> RealtimeConfig:
    values: dict[str, Any] = {"endpoint": sim.url, "api_key": API_KEY, "connect_timeout_s": WAIT_S,
                              "setup_timeout_s": WAIT_S}
    return RealtimeConfig(**(values | overrides))


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(SimOptions(api_key=API_KEY, replies=[REPLY], use_espeak=False, seed=7)) as server:
        yield server


async def connect(sim: SimServer, speaker: Any = None, key: str = API_KEY, **overrides: Any) -> RealtimeClient:
    return await open_session(config(sim, **overrides), ApiKeyAuth(key), speaker or VirtualSpeaker())


async def drain(client: RealtimeClient) -> list[Action]:
    async with asyncio.timeout(WAIT_S):
        return [action async for action in client.events()]


def unknown_fields(model: Any) -> list[str]:
    if isinstance(model, BaseModel):
        return list(model.model_extra or {}) + [f for name in type(model).model_fields
                                                for f in unknown_fields(getattr(model, name))]
    if isinstance(model, list):
        return [f for value in model for f in unknown_fields(value)]
    return []


# -- handshake ---------------------------------------------------------------------------------------------


async def test_a_wrong_key_is_credentials_rejected(sim: SimServer) -> None:
    with pytest.raises(CredentialsRejected, match="credentials rejected") as caught:
        await connect(sim, key="wrong-key-000000")
    assert "wrong-key-000000" not in str(caught.value)
    assert sim.handshakes[-1].status == 401


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [(403, Forbidden, "forbidden"), (404, DeploymentNotFound, "deployment not found"),
     (429, RateLimited, "rate limited (HTTP 429), retry after 9 s")],
)
async def test_refused_handshakes_give_their_clear_error(
    sim: SimServer, status: int, error: type[Exception], words: str
) -> None:
    sim.options.faults = Faults(handshake_status=status, handshake_failures=1, retry_after_s=9)
    with pytest.raises(error) as caught:
        await connect(sim)
    assert words in str(caught.value)
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 9.0
    client = await connect(sim)  # the fault was for one attempt only: the next connect works
    assert client.core.ready
    await client.close()


async def test_a_deployment_that_is_not_realtime_is_a_400_with_the_service_code(sim: SimServer) -> None:
    with pytest.raises(BadRequest, match="OpperationNotSupported") as caught:
        await connect(sim, deployment="whisper-1")
    assert caught.value.code == "OpperationNotSupported"


async def test_no_simulator_listening_is_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = RealtimeConfig(endpoint=f"ws://127.0.0.1:{port}", api_key=API_KEY)
    with pytest.raises(ServerUnreachable, match="connection refused"):
        await open_session(cfg, ApiKeyAuth(API_KEY), VirtualSpeaker())


# -- close codes -------------------------------------------------------------------------------------------


async def test_the_session_cap_closes_with_1001_and_the_services_reason(sim: SimServer) -> None:
    sim.options.session_cap_s = 2.0
    client = await connect(sim)
    assert client.core.deadline is not None
    actions = await drain(client)
    ended = actions[-1]
    assert isinstance(ended, SessionEnded)
    assert ended.reason.startswith("session expired: Your session hit the maximum duration of")
    assert (await sim.wait_session_ended()).close_code == 1001


@pytest.mark.parametrize(
    ("faults", "reason"),
    [(Faults(drop_after_events=2), "connection dropped"),
     (Faults(close_after_events=2, close_code=1011), "server error: simulated server failure")],
    ids=["1006", "1011"],
)
async def test_unexpected_closes_end_the_session_with_their_reason(
    sim: SimServer, faults: Faults, reason: str
) -> None:
    sim.options.faults = faults  # after session.created and session.updated
    client = await connect(sim)
    actions = await drain(client)
    assert actions[-1] == SessionEnded(reason)


async def test_a_malformed_frame_does_not_end_the_session(sim: SimServer) -> None:
    sim.options.faults = Faults(malformed_after_events=2)
    client = await connect(sim)
    events = client.events()
    first = await anext(events)
    assert isinstance(first, ServerError) and first.code == "malformed_frame" and not first.fatal
    assert await client.send_audio(silence(0.1))
    await client.close()
    rest = [action async for action in events]
    assert rest == [SessionEnded("closed normally")]


# -- a conversation with a barge-in ----------------------------------------------------------------------


async def test_barge_in_truncates_at_the_played_position_and_the_simulator_agrees(sim: SimServer) -> None:
    speaker = VirtualSpeaker()
    client = await connect(sim, speaker)
    seen: list[Action] = []

    async def consume() -> None:
        async for action in client.events():
            seen.append(action)
            await speaker.take(action)

    consumer = asyncio.create_task(consume())
    try:
        # A question: a second of voice, then the silence that ends the turn; the simulator answers.
        for chunk in (tone(1.0), silence(1.0)):
            assert await client.send_audio(chunk)
        item = await speaker.wait_queued(RATE)  # a second of the reply has arrived
        speaker.played[item] = RATE * 600 // 1000 + 7  # ...of which the device has played 600.3 ms
        speaker.playing = item
        # The visitor speaks over the reply.
        assert await client.send_audio(tone(0.5, freq=330.0))
        truncation = await sim.wait_truncation()
        assert (truncation.item_id, truncation.audio_end_ms, truncation.accepted) == (item, 600, True)
        assert truncation.item_audio_ms is not None and truncation.item_audio_ms >= 1000
        truncated = await sim.wait_server_event("conversation.item.truncated")
        assert truncated["audio_end_ms"] == 600
        async with asyncio.timeout(WAIT_S), speaker.changed:
            await speaker.changed.wait_for(lambda: Truncated(item, 600) in seen)
    finally:
        await client.close()
        async with asyncio.timeout(WAIT_S):
            await consumer

    flush_at = seen.index(FlushPlayback(item))
    assert isinstance(seen[flush_at + 2], SpeechStarted)  # flush, truncate, then the speech event
    assert speaker.after_flush == []  # nothing of the interrupted reply was queued after the flush
    usage = [a for a in seen if isinstance(a, Usage)]
    done = [a for a in seen if isinstance(a, ResponseDone)]
    assert done and usage and usage[0].audio_out > 0 and usage[0].audio_in > 0
    assert client.core.usage.audio_out == sum(u.audio_out for u in usage)
    assert isinstance(seen[-1], SessionEnded)
    # Everything the client sent is valid GA, field for field.
    record = sim.sessions[0]
    kinds = {e["type"] for e in record.client_events}
    assert {"session.update", "input_audio_buffer.append", "conversation.item.truncate"} <= kinds
    adapter = TypeAdapter(RealtimeClientEvent)
    for event in record.client_events:
        assert unknown_fields(adapter.validate_python(json.loads(json.dumps(event)))) == []
