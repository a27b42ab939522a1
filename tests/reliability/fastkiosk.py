"""The real daemon at an accelerated pace: synthetic microphone blocks in, a fast speaker out.

A soak of hundreds of conversations, a leak check over a hundred sessions, or a spend comparison over
minutes of kiosk time cannot afford the real-time clock of the audio rig. :class:`FastKiosk` keeps every
part between the sound devices and the network real — :class:`~kioskd.daemon.Daemon`, the jitter buffer,
the budget and ledger, the realtime client over a real WebSocket — and replaces only the two clocked ends:

* the microphone is a task that converts a synthetic 24 kHz signal block by block with the capture path's
  own :class:`~kioskd.audio.dsp.CaptureConverter` and hands each block to ``daemon.on_block``, ``speedup``
  times faster than real time (background noise or silence when nobody speaks);
* the speaker is a task that pulls blocks from the :class:`~kioskd.audio.playback.JitterBuffer` at the
  same pace, as the output device's callback would.

The wake word is given directly (:meth:`FastKiosk.wake` calls ``daemon.on_wake`` at the current position of
the microphone), because the detector's own cost is measured elsewhere. Everything the daemon does is
recorded (:attr:`FastKiosk.events`), and every way it could fail silently — an exception escaping a task, a
session task that died, an exception in a handler — is collected in :attr:`FastKiosk.crashes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kioskd.audio.dsp import REALTIME_RATE, CaptureConverter
from kioskd.audio.earcons import Earcons
from kioskd.audio.playback import JitterBuffer
from kioskd.budget import Budget, Ledger
from kioskd.config import Settings, deep_merge, load_settings
from kioskd.daemon import Daemon, DaemonEvent, RealtimeLink, Speaker, State
from kioskd.realtime.auth import make_authenticator
from kioskd.realtime.client import open_session
from kioskd.wake import WakeEvent

PCM = npt.NDArray[np.int16]
KEY = "fast-kiosk-key-5b0e7d1c"
FIXED_DAY = date(2026, 1, 15)
IDLE_STATES = (State.LISTENING, State.DEGRADED, State.BUDGET_EXHAUSTED)


def fast_settings(state_dir: Path, sim_url: str, speedup: float,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Settings for an accelerated kiosk: the session timers scaled by ``speedup``, no caps, no health port.

    The simulator's VAD works in audio time, so its settings stay as they are; what runs on the loop's clock
    (idle timeout, connect back-off) is divided by ``speedup`` so a conversation keeps its shape.
    """
    base: dict[str, Any] = {
        "audio": {"echo_cancellation": "off"},
        "realtime": {"endpoint": sim_url, "api_key": KEY, "silence_duration_ms": 200,
                     "connect_timeout_s": 5.0, "setup_timeout_s": 5.0},
        "session": {"idle_timeout_s": 8.0 / speedup, "connect_backoff_s": 0.0, "connect_backoff_max_s": 0.0},
        "budget": {"state_dir": str(state_dir), "daily_usd": 0.0, "session_usd": 0.0},
        "health": {"enabled": False},
    }
    return load_settings(Path(os.devnull), environ={}, overrides=deep_merge(base, overrides or {}))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class _Captured(logging.Handler):
    """Every record of the ``kioskd`` logger, and the ones that carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FastKiosk:
    """One daemon with synthetic, accelerated audio ends; use as ``async with FastKiosk(settings) as kiosk``."""

    def __init__(self, settings: Settings, *, speedup: float = 20.0,
                 background: Callable[[int], PCM] | None = None, keep_log: bool = True) -> None:
        self.settings = settings
        self.speedup = speedup
        self.block = REALTIME_RATE * settings.audio.block_ms // 1000
        self.buffer = JitterBuffer(settings.audio, earcons=Earcons(settings.audio))
        self.ledger = Ledger(settings.budget.state_dir, today=lambda: FIXED_DAY)
        self.budget = Budget(settings.budget, self.ledger)
        self.auth = make_authenticator(settings.realtime)
        self.daemon = Daemon(settings, speaker=self.buffer, open_session=self._open, budget=self.budget)
        self.daemon.listeners.append(self._on_event)
        self.converter = CaptureConverter(REALTIME_RATE, [0])
        self.events: list[DaemonEvent] = []
        self.crashes: list[str] = []
        self.mic_live = True
        self.blocks_fed = 0
        self.blocks_played = 0
        self.recorded: list[PCM] | None = None
        """Set to a list to keep every block the microphone delivered (to replay the same audio elsewhere)."""
        self._background = background or (lambda n: np.zeros(n, dtype=np.int16))
        self._script: deque[tuple[PCM, asyncio.Future[None]]] = deque()
        self._script_pos = 0
        self._changed: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._log = _Captured()
        self._keep_log = keep_log
        self._checked_task: object = None

    # -- parts ------------------------------------------------------------------------------------------

    async def _open(self, speaker: Speaker) -> RealtimeLink:
        return await open_session(self.settings.realtime, self.auth, speaker)

    def _on_event(self, event: DaemonEvent) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.crashes.append(f"loop: {context.get('message')}: {exc!r}")
        if self._changed is not None:
            self._changed.set()

    def _next_block(self) -> PCM:
        """The next microphone block: scripted speech where there is some, background elsewhere."""
        out = self._background(self.block)
        if not self._script:
            return out
        out = np.array(out, dtype=np.int16)  # a copy, to write the speech into
        filled = 0
        while filled < self.block and self._script:
            pcm, done = self._script[0]
            take = min(self.block - filled, len(pcm) - self._script_pos)
            out[filled:filled + take] = pcm[self._script_pos:self._script_pos + take]
            filled += take
            self._script_pos += take
            if self._script_pos >= len(pcm):
                self._script.popleft()
                self._script_pos = 0
                if not done.done():
                    done.set_result(None)
        return out

    async def _paced(self, step: Callable[[], None]) -> None:
        """Call ``step`` once per block period divided by ``speedup``, catching up when late."""
        loop = asyncio.get_running_loop()
        period = self.settings.audio.block_ms / 1000 / self.speedup
        start = loop.time()
        n = 0
        while True:
            try:
                step()
            except Exception as exc:  # a failing handler is a finding, and the kiosk must go on
                self.crashes.append(f"{step.__name__}: {exc!r}")
            n += 1
            await asyncio.sleep(max(0.0, start + n * period - loop.time()))

    def _feed_one(self) -> None:
        if not self.mic_live:
            return
        block = self._next_block()
        if self.recorded is not None:
            self.recorded.append(np.array(block, dtype=np.int16))
        converted = self.converter.convert(block)
        self.blocks_fed += 1
        self.daemon.on_block(converted)

    def _pull_one(self) -> None:
        out = np.zeros(self.buffer.rate * self.settings.audio.block_ms // 1000, dtype=np.int16)
        self.buffer.pull(out)
        self.blocks_played += 1

    # -- lifetime ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> FastKiosk:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_error)
        self._changed = asyncio.Event()
        logger = logging.getLogger("kioskd")
        logger.addHandler(self._log)
        logger.setLevel(logging.INFO)
        self._tasks = [loop.create_task(self._paced(self._feed_one), name="fast-mic"),
                       loop.create_task(self._paced(self._pull_one), name="fast-speaker")]
        self.daemon.on_mic_state(True, "")
        await self.wait_for(lambda: self.daemon.state is State.LISTENING, "listening", 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.daemon.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.daemon.wait_stopped(), 10)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.auth.aclose()
        logging.getLogger("kioskd").removeHandler(self._log)

    # -- what a visitor does ----------------------------------------------------------------------------

    def wake(self, model: str = "hey_jarvis") -> None:
        """The wake word just ended, at the microphone's current position."""
        self.check_session_task()
        self.daemon.on_wake(WakeEvent(model, 0.99, self.converter.end16k, time.monotonic()))

    def say(self, pcm24k: PCM) -> asyncio.Future[None]:
        """Queue speech (int16, 24 kHz) for the microphone; the future is done once all of it was fed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._script.append((np.asarray(pcm24k, dtype=np.int16), done))
        return done

    @property
    def position_s(self) -> float:
        """Seconds of microphone audio delivered so far: the kiosk's clock at an accelerated pace."""
        return self.blocks_fed * self.settings.audio.block_ms / 1000

    def lose_mic(self, reason: str = "the USB microphone was unplugged") -> None:
        self.mic_live = False
        self.daemon.on_mic_state(False, reason)

    def restore_mic(self) -> None:
        self.mic_live = True
        self.daemon.on_mic_state(True, "")

    # -- observing --------------------------------------------------------------------------------------

    def check_session_task(self) -> None:
        """Record a session task that ended with an exception (nobody else would ever see it)."""
        task = self.daemon._session_task
        if task is None or task is self._checked_task or not task.done():
            return
        self._checked_task = task
        if not task.cancelled() and task.exception() is not None:
            self.crashes.append(f"session task: {task.exception()!r}")

    @property
    def idle(self) -> bool:
        """No session open or opening, and the daemon in one of its resting states."""
        task = self.daemon._session_task
        return self.daemon.state in IDLE_STATES and (task is None or task.done())

    async def wait_for(self, predicate: Callable[[], Any], what: str, timeout_s: float) -> Any:
        """Wait until ``predicate()`` is truthy: re-checked on every daemon event and every 10 ms."""
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = [(e.name, e.fields.get("state") or e.fields.get("reason")) for e in self.events[-12:]]
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}; "
                                     f"state {self.daemon.state.value}; last events {recent}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.01))

    async def wait_event(self, name: str, after: int, timeout_s: float = 20.0) -> DaemonEvent:
        found: DaemonEvent = await self.wait_for(
            lambda: next((e for e in self.events[after:] if e.name == name), None), f"event {name!r}", timeout_s)
        return found

    def named(self, name: str, after: int = 0) -> list[DaemonEvent]:
        return [e for e in self.events[after:] if e.name == name]

    @property
    def log_records(self) -> list[logging.LogRecord]:
        return self._log.records

    def tracebacks(self) -> list[str]:
        """Log lines that carried an exception's traceback: a handler that failed somewhere."""
        return [r.getMessage() for r in self._log.records if r.exc_info or r.exc_text]

    def forget_log(self) -> None:
        """Drop the captured log lines (a long soak would otherwise hold them all)."""
        self._log.records.clear()
