"""The kiosk's state machine: listen for the wake word, converse, close, listen again.

One asyncio loop owns every piece of state here. Audio arrives as :class:`~kioskd.audio.capture.CaptureBlock`
objects already handed over from the PortAudio thread; wake detections arrive from the detector's worker
thread the same way; the realtime session is driven by :mod:`kioskd.realtime.client`, whose protocol core
decides what to play, flush and truncate. This module only decides *when*: when to open a session, what
audio to send up first (the pre-roll, from the end of the wake word), when the visitor has gone quiet,
when the money has run out, and what to do when a part fails. Nothing in here blocks the loop.

States (logged, in ``/status`` and in sd_notify ``STATUS=``): starting, listening, connecting, conversing,
closing, degraded (microphone lost), budget_exhausted, stopping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import signal
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kioskd.budget import Budget, Ledger, SessionSpend, TokenUsage
from kioskd.config import Settings
from kioskd.logs import get_logger, log_event
from kioskd.realtime import session as rt
from kioskd.realtime.transport import RateLimited, RealtimeConnectError

log = get_logger("daemon")

PCM16 = npt.NDArray[np.int16]
RATE_UPLINK = 24_000
# How long the uplink may hold audio while the line opens, beyond the pre-roll (connect + set-up timeouts).
_TICK_S = 0.05


class State(enum.StrEnum):
    STARTING = "starting"
    LISTENING = "listening"
    CONNECTING = "connecting"
    CONVERSING = "conversing"
    CLOSING = "closing"
    DEGRADED = "degraded"
    BUDGET_EXHAUSTED = "budget_exhausted"
    STOPPING = "stopping"


class CloseReason(enum.StrEnum):
    IDLE = "idle"
    MAX_SESSION = "max_session"
    SESSION_EXPIRING = "session_expiring"
    SESSION_EXPIRED = "session_expired"
    SESSION_BUDGET = "session_budget"
    DAILY_BUDGET = "daily_budget"
    SERVER_ERROR = "server_error"
    CONNECTION_LOST = "connection_lost"
    MICROPHONE_LOST = "microphone_lost"
    STOPPING = "stopping"


_NORMAL_CLOSES = {CloseReason.IDLE, CloseReason.MAX_SESSION, CloseReason.SESSION_EXPIRING, CloseReason.SESSION_EXPIRED,
                  CloseReason.SESSION_BUDGET}
# Close this long before the server's own deadline (at most a tenth of the session), so it never cuts us off.
_EXPIRY_MARGIN_S = 5.0


# -- the seams: what the daemon needs from the audio layer, the wake detector and the realtime client --------

class Block(Protocol):
    """What :class:`kioskd.audio.capture.CaptureBlock` carries."""

    @property
    def pcm16k(self) -> PCM16: ...
    @property
    def pcm24k(self) -> PCM16: ...
    @property
    def end16k(self) -> int: ...
    @property
    def end24k(self) -> int: ...


class Speaker(rt.PlaybackView, Protocol):
    """The reply side of :class:`kioskd.audio.playback.JitterBuffer`."""

    def enqueue(self, item_id: str, pcm24k: PCM16) -> None: ...
    def end_item(self, item_id: str) -> None: ...
    def flush(self) -> None: ...
    def play_earcon(self, sound: str) -> None: ...


class Microphone(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


class UplinkFilter(Protocol):
    """What :class:`kioskd.audio.echo.UplinkEcho` does: the echo taken out of each captured 24 kHz block."""

    def process(self, pcm24k: PCM16) -> PCM16: ...


class WakeEventLike(Protocol):
    """What :class:`kioskd.wake.WakeEvent` carries."""

    @property
    def model(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def end16k(self) -> int: ...


class Detector(Protocol):
    """The side of :class:`kioskd.wake.WakeDetector` the state machine uses."""

    def feed(self, pcm16k: PCM16, end16k: int) -> bool: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class RealtimeLink(Protocol):
    """What :func:`kioskd.realtime.client.open_session` returns."""

    core: rt.RealtimeSession

    async def send_audio(self, pcm24k: bytes) -> bool: ...
    def events(self) -> AsyncIterator[rt.Action]: ...
    async def close(self) -> None: ...


@dataclass
class DaemonEvent:
    """One line of the daemon's timeline (the demo prints these; the log has them too)."""

    name: str
    t: float
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Counters:
    wakes: int = 0
    sessions: int = 0
    sessions_refused: int = 0
    connect_failures: int = 0
    barge_ins: int = 0
    server_errors: int = 0
    capture_blocks: int = 0


@dataclass
class ActiveSession:
    id: str
    wake_model: str
    started: float
    spend: SessionSpend = field(default_factory=SessionSpend)
    user_speaking: bool = False
    response_active: bool = False
    quiet_since: float | None = None
    last_item: str | None = None


class Daemon:
    """Owns the state machine; parts are handed in so the offline demo runs the very same code."""

    def __init__(
        self,
        settings: Settings,
        *,
        speaker: Speaker,
        open_session: Callable[[Speaker], Awaitable[RealtimeLink]],
        budget: Budget,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.speaker = speaker
        self._open_session = open_session
        self.budget = budget
        self.clock = clock
        self.state = State.STARTING
        self.state_reason = "starting"
        self.counters = Counters()
        self.last_error: str | None = None
        self.started_at = clock()
        self.session: ActiveSession | None = None
        self.listeners: list[Callable[[DaemonEvent], None]] = []
        self.state_listeners: list[Callable[[State, str], None]] = []
        self.detector: Detector | None = None
        self.uplink_filter: UplinkFilter | None = None
        """Echo removal for the uplink, before the pre-roll ring and the session (None: the block as captured)."""
        self.mic_ok = False
        self.last_block_at: float | None = None
        self._ring: deque[tuple[int, PCM16]] = deque()
        self._ring_samples = 0
        self._pending: list[PCM16] | None = None
        self._uplink: asyncio.Queue[PCM16] | None = None
        self._actions: asyncio.Queue[rt.Action | CloseReason] | None = None
        self._session_task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._failures_in_a_row = 0
        self._stopping = asyncio.Event()

    # -- timeline and state ---------------------------------------------------------------------------------

    def emit(self, name: str, **fields: Any) -> None:
        event = DaemonEvent(name, self.clock(), fields)
        for listener in self.listeners:
            listener(event)

    def set_state(self, state: State, reason: str) -> None:
        if state == self.state:
            return
        previous, self.state, self.state_reason = self.state, state, reason
        log_event(log, "state", "state %s -> %s (%s)", previous.value, state.value, reason,
                  KIOSKD_STATE=state.value, REASON=reason)
        self.emit("state", state=state.value, reason=reason)
        for listener in self.state_listeners:
            listener(state, reason)

    def _idle_state(self) -> State:
        if not self.mic_ok:
            return State.DEGRADED
        return State.BUDGET_EXHAUSTED if self.budget.daily_exhausted else State.LISTENING

    # -- inputs from the audio layer and the wake detector (called on the loop) --------------------------------

    def on_block(self, block: Block) -> None:
        """A block of microphone audio, already mixed and resampled."""
        self.counters.capture_blocks += 1
        self.last_block_at = self.clock()
        pcm24 = block.pcm24k if self.uplink_filter is None else self.uplink_filter.process(block.pcm24k)
        self._ring.append((block.end24k, pcm24))
        self._ring_samples += len(pcm24)
        keep = int(self.settings.session.preroll_s * RATE_UPLINK)
        while self._ring and self._ring_samples - len(self._ring[0][1]) >= keep:
            self._ring_samples -= len(self._ring.popleft()[1])
        if self.state is State.BUDGET_EXHAUSTED and self.counters.capture_blocks % 250 == 0 \
                and not self.budget.daily_exhausted:
            self.set_state(State.LISTENING, "a new day's budget")
        if self.state in (State.LISTENING, State.BUDGET_EXHAUSTED):
            if self.detector is not None:
                self.detector.feed(block.pcm16k, block.end16k)
        elif self.state == State.CONNECTING and self._pending is not None:
            self._pending.append(pcm24)
        elif self.state == State.CONVERSING and self._uplink is not None:
            self._uplink.put_nowait(pcm24)

    def on_mic_state(self, ok: bool, reason: str) -> None:
        self.mic_ok = ok
        if not ok:
            self.last_error = f"microphone: {reason}"
            log_event(log, "error", "microphone lost: %s", reason, level=logging.ERROR, REASON=reason)
            if self.session is not None and self._actions is not None:
                self._actions.put_nowait(CloseReason.MICROPHONE_LOST)
            if self.state not in (State.STOPPING, State.CONNECTING, State.CONVERSING, State.CLOSING):
                self.set_state(State.DEGRADED, f"microphone lost: {reason}")
        elif self.state in (State.DEGRADED, State.STARTING):
            self.set_state(self._idle_state(), "microphone delivering audio")

    def on_wake(self, wake: WakeEventLike) -> None:
        if self.state not in (State.LISTENING, State.BUDGET_EXHAUSTED):
            return
        self.counters.wakes += 1
        log_event(log, "wake", "wake word %s (score %.2f)", wake.model, wake.score,
                  WAKE_MODEL=wake.model, WAKE_SCORE=f"{wake.score:.3f}")
        self.emit("wake", model=wake.model, score=wake.score)
        if self.budget.daily_exhausted:
            self.counters.sessions_refused += 1
            self.speaker.play_earcon("budget")
            self.set_state(State.BUDGET_EXHAUSTED, "daily budget spent")
            log_event(log, "session_refused", "session refused: today's budget of $%.2f is spent",
                      self.settings.budget.daily_usd, level=logging.WARNING, REASON="daily_budget")
            self.emit("refused", reason="daily budget spent")
            return
        now = self.clock()
        if now < self._retry_at:
            self.counters.sessions_refused += 1
            self.speaker.play_earcon("error")
            log_event(log, "session_refused", "not connecting yet: backing off %.1f s more after failures",
                      self._retry_at - now, level=logging.WARNING, REASON="backoff")
            self.emit("refused", reason=f"backing off {self._retry_at - now:.1f} s")
            return
        self.speaker.play_earcon("wake")
        self._pending = self._preroll_from(wake.end16k * RATE_UPLINK // 16_000)
        self._session_task = asyncio.get_running_loop().create_task(self._converse(wake))

    def _preroll_from(self, start24k: int) -> list[PCM16]:
        """Audio captured since ``start24k`` (the end of the wake word), from the ring."""
        out: list[PCM16] = []
        for end, pcm in self._ring:
            begin = end - len(pcm)
            if end <= start24k:
                continue
            out.append(pcm[max(0, start24k - begin):])
        return out

    # -- one conversation -------------------------------------------------------------------------------------

    async def _converse(self, wake: WakeEventLike) -> None:
        sid = uuid.uuid4().hex[:12]
        self.set_state(State.CONNECTING, f"wake word {wake.model}")
        try:
            link: RealtimeLink = await self._open_session(self.speaker)
        except RealtimeConnectError as exc:
            self._connect_failed(str(exc), getattr(exc, "retry_after", None) if isinstance(exc, RateLimited) else None)
            return
        except (OSError, TimeoutError) as exc:
            self._connect_failed(f"{type(exc).__name__}: {exc}", None)
            return
        self._failures_in_a_row = 0
        self.counters.sessions += 1
        self.budget.ledger.count_session()
        self.session = ActiveSession(sid, wake.model, self.clock())
        self._uplink = asyncio.Queue()
        self._actions = asyncio.Queue()
        preroll = self._pending or []
        self._pending = None
        for pcm in preroll:
            self._uplink.put_nowait(pcm)
        preroll_ms = sum(len(p) for p in preroll) * 1000 // RATE_UPLINK
        log_event(log, "session_open", "session open; sending %d ms captured since the wake word", preroll_ms,
                  SESSION_ID=sid, WAKE_MODEL=wake.model, PREROLL_MS=preroll_ms)
        self.emit("connected", session_id=sid, preroll_ms=preroll_ms)
        self.set_state(State.CONVERSING, "session ready")
        reason = CloseReason.CONNECTION_LOST
        sender = asyncio.get_running_loop().create_task(self._send_uplink(link))
        reader = asyncio.get_running_loop().create_task(self._read_actions(link))
        try:
            reason = await self._conversation(link)
        finally:
            sender.cancel()
            reader.cancel()
            for task in (sender, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._close(link, reason)

    def _connect_failed(self, message: str, retry_after: float | None) -> None:
        self._pending = None
        self.counters.connect_failures += 1
        self._failures_in_a_row += 1
        cfg = self.settings.session
        backoff = min(cfg.connect_backoff_s * 2 ** (self._failures_in_a_row - 1), cfg.connect_backoff_max_s)
        if retry_after:
            backoff = max(backoff, retry_after)
        self._retry_at = self.clock() + backoff
        self.last_error = f"connect: {message}"
        log_event(log, "error", "could not open a realtime session: %s (next try allowed in %.1f s)", message,
                  backoff, level=logging.ERROR, REASON="connect_failed")
        self.emit("connect_failed", error=message, backoff_s=backoff)
        self.speaker.play_earcon("error")
        if self.detector is not None:
            self.detector.reset()
        self.set_state(self._idle_state(), "connect failed")

    async def _send_uplink(self, link: RealtimeLink) -> None:
        assert self._uplink is not None
        while True:
            pcm = await self._uplink.get()
            await link.send_audio(pcm.tobytes())

    async def _read_actions(self, link: RealtimeLink) -> None:
        assert self._actions is not None
        try:
            async for action in link.events():
                self._actions.put_nowait(action)
        except Exception as exc:  # the link must end the session, never the daemon
            log.warning("realtime link failed: %s", exc)
        self._actions.put_nowait(rt.SessionEnded("connection closed"))

    async def _conversation(self, link: RealtimeLink) -> CloseReason:
        assert self._actions is not None and self.session is not None
        cfg = self.settings.session
        while True:
            action = None
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(_TICK_S):
                    action = await self._actions.get()
            except TimeoutError:
                pass
            if isinstance(action, CloseReason):
                return action
            if action is not None:
                reason = self._apply(action, link)
                if reason is not None:
                    return reason
            now = self.clock()
            s = self.session
            busy = s.user_speaking or s.response_active or self.speaker.current_item() is not None
            if busy:
                s.quiet_since = None
            elif s.quiet_since is None:
                s.quiet_since = now
            elif now - s.quiet_since >= cfg.idle_timeout_s:
                return CloseReason.IDLE
            if now - s.started >= cfg.max_session_s:
                return CloseReason.MAX_SESSION
            deadline = link.core.deadline
            if deadline is not None and now >= deadline - min(_EXPIRY_MARGIN_S, 0.1 * (deadline - s.started)):
                return CloseReason.SESSION_EXPIRING

    def _apply(self, action: rt.Action, link: RealtimeLink) -> CloseReason | None:
        s = self.session
        assert s is not None
        match action:
            case rt.PlayAudio(item_id=item, pcm=pcm):
                if s.last_item not in (None, item):
                    self.speaker.end_item(s.last_item)
                s.last_item = item
                self.speaker.enqueue(item, np.frombuffer(pcm, dtype="<i2").astype(np.int16))
            case rt.FlushPlayback(item_id=item):
                self.speaker.flush()
                self.counters.barge_ins += 1
                self.emit("barge_in", item_id=item, played_ms=self.speaker.played_samples(item) // 24)
            case rt.Truncated(item_id=item, audio_end_ms=ms):
                self.emit("truncated", item_id=item, audio_end_ms=ms)
            case rt.SpeechStarted():
                s.user_speaking = True
                self.emit("speech_started")
            case rt.SpeechStopped():
                s.user_speaking = False
                self.emit("speech_stopped")
            case rt.ResponseStarted():
                s.response_active = True
            case rt.ResponseDone(status=status):
                s.response_active = False
                if s.last_item is not None:  # all of it has arrived: play the tail even below the jitter target
                    self.speaker.end_item(s.last_item)
                self.emit("response_done", status=status)
            case rt.Transcript(role=role, text=text):
                who = "visitor" if role == "user" else "assistant"
                log_event(log, "transcript", "%s said: %s", who, text, SESSION_ID=s.id, ROLE=who)
                self.emit("transcript", role=who, text=text)
            case rt.Usage():
                usage = TokenUsage(action.text_in, action.audio_in, action.cached_text_in, action.cached_audio_in,
                                   action.text_out, action.audio_out)
                usd = self.budget.record(s.spend, usage)
                log_event(log, "usage", "response cost $%.4f (session $%.4f, today $%.4f)", usd, s.spend.usd,
                          self.budget.ledger.spent_today, level=logging.DEBUG, SESSION_ID=s.id,
                          COST_USD=f"{usd:.6f}", TOKENS_IN=usage.tokens_in, TOKENS_OUT=usage.tokens_out)
                if self.budget.daily_exhausted:
                    return CloseReason.DAILY_BUDGET
                if self.budget.session_exhausted(s.spend):
                    return CloseReason.SESSION_BUDGET
            case rt.ServerError(code=code, message=message, fatal=fatal):
                self.counters.server_errors += 1
                self.last_error = f"server: {code or ''} {message}".strip()
                self.emit("server_error", code=code, message=message, fatal=fatal)
                if fatal:
                    return CloseReason.SERVER_ERROR
            case rt.SessionEnded(reason=why):
                if why.startswith("session expired"):
                    log.info("the server ended the session: %s", why)
                    return CloseReason.SESSION_EXPIRED
                if why.startswith("closed normally"):
                    return CloseReason.CONNECTION_LOST
                self.last_error = f"session ended: {why}"
                log_event(log, "error", "realtime connection lost: %s", why, level=logging.ERROR, SESSION_ID=s.id,
                          REASON="connection_lost")
                return CloseReason.CONNECTION_LOST
            case _:
                pass
        return None

    async def _close(self, link: RealtimeLink, reason: CloseReason) -> None:
        s = self.session
        assert s is not None
        self.set_state(State.CLOSING, reason.value)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.close(), 3.0)
        duration = self.clock() - s.started
        if reason is not CloseReason.IDLE:
            self.speaker.flush()
        if reason in _NORMAL_CLOSES:
            self.speaker.play_earcon("end")
        elif reason is CloseReason.DAILY_BUDGET:
            self.speaker.play_earcon("budget")
        elif reason is not CloseReason.STOPPING:
            self.speaker.play_earcon("error")
        usage = s.spend.usage
        log_event(log, "session_close", "session closed (%s) after %.1f s: %d tokens in, %d out, $%.4f",
                  reason.value, duration, usage.tokens_in, usage.tokens_out, s.spend.usd,
                  SESSION_ID=s.id, REASON=reason.value, DURATION_S=f"{duration:.1f}", COST_USD=f"{s.spend.usd:.6f}",
                  TOKENS_IN=usage.tokens_in, TOKENS_OUT=usage.tokens_out,
                  COST_TODAY_USD=f"{self.budget.ledger.spent_today:.6f}")
        self.emit("session_close", session_id=s.id, reason=reason.value, duration_s=duration,
                  tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost_usd=s.spend.usd,
                  cached_in=usage.cached_text_in + usage.cached_audio_in)
        self.session = None
        self._uplink = None
        self._actions = None
        if self.detector is not None:
            self.detector.reset()
        if reason is not CloseReason.STOPPING:
            self.set_state(self._idle_state(), f"session closed ({reason.value})")

    # -- lifetime ---------------------------------------------------------------------------------------------

    def retry_in(self) -> float:
        """Seconds until a wake may open a session again after connect failures (0: now)."""
        return max(0.0, self._retry_at - self.clock())

    def stop(self) -> None:
        """Ask the daemon to finish: the open session (if any) closes cleanly first."""
        self._stopping.set()
        if self._actions is not None:
            self._actions.put_nowait(CloseReason.STOPPING)

    async def wait_stopped(self) -> None:
        await self._stopping.wait()
        self.set_state(State.STOPPING, "stop requested")
        task = self._session_task
        if task is not None and not task.done():
            if self._actions is not None:
                self._actions.put_nowait(CloseReason.STOPPING)
            try:
                await asyncio.wait_for(asyncio.shield(task), 4.0)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.budget.ledger.save()

    def status(self) -> dict[str, Any]:
        s = self.session
        return {
            "state": self.state.value,
            "state_reason": self.state_reason,
            "uptime_s": round(self.clock() - self.started_at, 1),
            "counters": vars(self.counters).copy(),
            "last_error": self.last_error,
            "spend_today_usd": round(self.budget.ledger.spent_today, 6),
            "session": None if s is None else {
                "id": s.id, "age_s": round(self.clock() - s.started, 1), "spend_usd": round(s.spend.usd, 6),
            },
        }


def make_ledger_budget(settings: Settings) -> Budget:
    return Budget(settings.budget, Ledger(settings.budget.state_dir))


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop)


def cli_run(args: argparse.Namespace) -> int:
    from kioskd.runtime import run_device_daemon

    return run_device_daemon(args)
