"""Timestamps taken at the seams, on one clock, without changing what is measured.

Latency figures need the moment something crossed a boundary: a server event leaving the client's
WebSocket, an append reaching the simulator, a block reaching the output device. These probes wrap the one
method at each boundary for the duration of a benchmark and record ``time.monotonic()`` (which is also what
the daemon's clock and asyncio's loop clock read, so all timestamps compare directly). They add a list
append per call and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import numpy as np

from kioskd.audio.playback import JitterBuffer
from kioskd.realtime.transport import RealtimeConnection
from kioskd.sim.core import SimCore


@dataclass
class ServerEventSeen:
    t: float
    type: str
    item_id: str | None


@dataclass
class ClientReceipts:
    """Server events as the daemon's realtime client received them (after parsing, before the core)."""

    events: list[ServerEventSeen] = field(default_factory=list)

    def of(self, event_type: str, after: float = 0.0) -> list[ServerEventSeen]:
        return [e for e in self.events if e.type == event_type and e.t >= after]


@contextlib.contextmanager
def client_receipts(on_event: Callable[[ServerEventSeen], None] | None = None) -> Iterator[ClientReceipts]:
    """Record every server event the client receives; ``on_event`` is called with each, on the loop, before
    the protocol core sees it."""
    seen = ClientReceipts()
    original = RealtimeConnection.receive

    async def receive(self: RealtimeConnection) -> dict[str, Any]:
        event = await original(self)
        item = event.get("item_id")
        record = ServerEventSeen(time.monotonic(), str(event.get("type")), item if isinstance(item, str) else None)
        seen.events.append(record)
        if on_event is not None:
            on_event(record)
        return event

    with mock.patch.object(RealtimeConnection, "receive", receive):
        yield seen


@dataclass
class SimReceipts:
    """Client events as the simulator received them: (loop time, session id, event type)."""

    events: list[tuple[float, str, str]] = field(default_factory=list)

    def first(self, session_id: str, event_type: str) -> float | None:
        return next((t for t, sid, kind in self.events if sid == session_id and kind == event_type), None)


@contextlib.contextmanager
def sim_receipts() -> Iterator[SimReceipts]:
    seen = SimReceipts()
    original = SimCore.receive

    def receive(self: SimCore, frame: str | bytes, now: float) -> Any:
        kind = "?"
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            kind = str(json.loads(frame).get("type"))
        seen.events.append((now, self.record.session_id, kind))
        return original(self, frame, now)

    with mock.patch.object(SimCore, "receive", receive):
        yield seen


@dataclass
class OutputBlock:
    t: float
    loud: bool


class OutputTimes:
    """Every block the jitter buffer hands to the output device, and flushes, with their times.

    ``watch(item)`` arms a one-shot: the time of the first block in which any sample of ``item`` was handed
    over is stored in :attr:`first_sample`.
    """

    def __init__(self, buffer: JitterBuffer) -> None:
        self.buffer = buffer
        self.blocks: list[OutputBlock] = []
        self.flushes: list[float] = []
        self.first_sample: dict[str, float] = {}
        self._watched: str | None = None
        self._lock = threading.Lock()
        buffer.on_output = self._on_output
        original_flush = buffer.flush

        def flush() -> None:
            original_flush()
            self.flushes.append(time.monotonic())

        buffer.flush = flush  # type: ignore[method-assign]

    def watch(self, item_id: str) -> None:
        with self._lock:
            if item_id not in self.first_sample:
                self._watched = item_id

    def _on_output(self, block: np.ndarray) -> None:
        now = time.monotonic()
        self.blocks.append(OutputBlock(now, bool(np.any(block))))
        watched = self._watched
        if watched is not None and self.buffer.played_samples(watched) > 0:
            with self._lock:
                self.first_sample.setdefault(watched, now)
                self._watched = None

    def first_block_after(self, t: float) -> OutputBlock | None:
        return next((b for b in self.blocks if b.t > t), None)

    def loud_between(self, start: float, end: float) -> int:
        return sum(1 for b in self.blocks if start < b.t <= end and b.loud)
