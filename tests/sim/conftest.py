"""Shared helpers for the simulator's tests: real espeak-ng speech, SDK-model validation, raw clients."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import subprocess
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soxr
from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter
from websockets.asyncio.client import ClientConnection, connect

from kioskd.sim import SimOptions, SimServer

KEY = "sim-test-key-0123456789"
MODEL = "gpt-realtime-1.5"
RATE = 24_000
BYTES_PER_MS = 48
# Fields the service is known to send beyond the SDK's models: ``obfuscation`` on transcript deltas (§3.1) and
# the server-only ``id``/``object``/``expires_at`` of the session object (§3.2, §3.8).
KNOWN_EXTRA_FIELDS = {"obfuscation"}
KNOWN_SESSION_FIELDS = {"id", "object", "expires_at"}

_SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


@functools.cache
def speech(text: str, voice: str = "en-us") -> bytes:
    """``text`` spoken by espeak-ng, as PCM16 mono 24 kHz (made here, independently of the simulator)."""
    out = subprocess.run(["espeak-ng", "--stdout", "-v", voice, text], capture_output=True, check=True, timeout=60)
    with wave.open(io.BytesIO(out.stdout)) as wav:
        rate = wav.getframerate()
        frames = wav.readframes(2**31 - 1)
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.float32)
    resampled = np.asarray(soxr.resample(samples, rate, RATE), dtype=np.float32)
    return np.clip(resampled, -32768, 32767).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms * BYTES_PER_MS)


def noise(ms: int, dbfs: float, seed: int = 7) -> bytes:
    """White noise with the given RMS level."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(ms * RATE // 1000) * (32768 * 10 ** (dbfs / 20))
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def scaled(pcm: bytes, gain_db: float) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def append_event(pcm: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}


def _unknown_fields(model: BaseModel, path: str) -> list[str]:
    allowed = KNOWN_EXTRA_FIELDS | (KNOWN_SESSION_FIELDS if path.endswith(".session") else set())
    found = [f"{path}.{name}" for name in (model.model_extra or {}) if name not in allowed]
    for name in type(model).model_fields:
        found += _unknown_in(getattr(model, name), f"{path}.{name}")
    return found


def _unknown_in(value: Any, path: str) -> list[str]:
    if isinstance(value, BaseModel):
        return _unknown_fields(value, path)
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in _unknown_in(v, f"{path}[{i}]")]
    return []


def validate_server_event(event: dict[str, Any]) -> BaseModel:
    """Parse with the official ``openai`` models; fail on a wrong shape *or* a field the SDK does not know."""
    model: BaseModel = _SERVER_EVENT.validate_python(event)
    assert getattr(model, "type", None) == event["type"]
    unknown = _unknown_fields(model, event["type"])
    assert not unknown, f"fields unknown to the openai SDK: {unknown}"
    assert event["event_id"].startswith("event_")
    return model


def fast_options(**overrides: Any) -> SimOptions:
    base: dict[str, Any] = {"api_key": KEY, "speed": 20.0, "seed": 1234}
    base.update(overrides)
    return SimOptions(**base)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with SimServer(fast_options()) as server:
        yield server


def ws_url(server: SimServer, model: str = MODEL, path: str = "/openai/v1/realtime") -> str:
    return f"{server.url}{path}?model={model}"


async def open_client(server: SimServer, **headers: str) -> ClientConnection:
    return await connect(ws_url(server), additional_headers=headers or {"api-key": KEY}, max_size=None)


async def next_event(ws: ClientConnection, timeout_s: float = 20.0) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return event


async def events_until(ws: ClientConnection, event_type: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Every event received up to and including the first ``event_type``."""
    events = []
    while True:
        event = await next_event(ws, timeout_s)
        events.append(event)
        if event["type"] == event_type:
            return events


@pytest.fixture
def kiosk_question() -> bytes:
    return speech("Hello, where is the information desk, please?")
