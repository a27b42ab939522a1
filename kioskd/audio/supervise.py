"""Keeping a sound device open for days: open, watch, close, wait, reopen — and never hang the event loop.

Capture and playback share this loop. A device goes away in three ways: opening fails (missing, busy, the
sound server is down), the stream reports an error and stops, or it simply stops delivering (a suspended
source, a wedged driver). Each ends the same way: close, report ``on_state(False, reason)``, wait with
exponential backoff, reopen; ``on_state(True, "")`` is reported only when audio really flows again.

PortAudio open/close calls can block for seconds on a sick device, so they run in short-lived daemon
threads with a timeout: a call that never returns costs one parked thread, not the daemon.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kioskd.audio.devices import DeviceError
from kioskd.config import AudioConfig
from kioskd.logs import get_logger, log_event

T = TypeVar("T")
OnState = Callable[[bool, str], None]
_log = get_logger("audio")


class BlockingCallTimeout(DeviceError):
    """A PortAudio call did not return in time (the device is wedged)."""


async def call_blocking(
    fn: Callable[[], T],
    *,
    limit_s: float,
    what: str,
    abandon: Callable[[T], None] | None = None,
) -> T:
    """Run ``fn`` in a daemon thread and await its result for at most ``limit_s`` seconds.

    Unlike ``asyncio.to_thread``, a call that never returns neither blocks the executor nor the interpreter's
    exit. If it returns after the caller gave up, ``abandon`` receives the result (e.g. to close a stream
    that opened too late).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    given_up = threading.Event()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def worker() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task, which decides
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
            return
        if given_up.is_set():
            if abandon is not None:
                with contextlib.suppress(Exception):
                    abandon(result)
            return
        try:
            loop.call_soon_threadsafe(settle, lambda: future.set_result(result))
        except RuntimeError:
            if abandon is not None:
                with contextlib.suppress(Exception):
                    abandon(result)

    threading.Thread(target=worker, name=f"kioskd-{what}", daemon=True).start()
    try:
        async with asyncio.timeout(limit_s):
            return await asyncio.shield(future)
    except TimeoutError:
        given_up.set()
        raise BlockingCallTimeout(f"{what} did not return within {limit_s:.0f} s") from None
    except asyncio.CancelledError:
        given_up.set()
        raise


def describe_error(exc: BaseException) -> str:
    """One line for an operator, without a traceback."""
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


class DeviceLink(abc.ABC):
    """The supervision loop around one device; subclasses open, watch and close the actual stream."""

    kind = "device"
    open_timeout_s = 10.0
    close_timeout_s = 5.0

    def __init__(
        self,
        cfg: AudioConfig,
        on_state: OnState | None,
        loop: asyncio.AbstractEventLoop | None,
        *,
        stall_blocks: int = 50,
        first_block_timeout_s: float = 6.0,
    ) -> None:
        self.cfg = cfg
        self.stall_s = stall_blocks * cfg.block_ms / 1000
        self.first_block_timeout_s = first_block_timeout_s
        self._opened_at: float | None = None
        self._on_state = on_state
        self._loop = loop
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._lost_reason: str | None = None
        self.up: bool | None = None  # None until the first open succeeded or failed
        self.last_error = ""
        self.reopen_attempts = 0
        self.opens = 0
        self._backoff = cfg.reopen_backoff_s

    # -- for subclasses ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open and start the stream; raise on failure."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the stream (must not raise)."""

    def _last_activity(self) -> float | None:
        """``time.monotonic()`` of the last block the device took or gave (subclasses with a real device)."""
        return None

    def _check(self, now: float) -> str | None:
        """Called a few times a second while open: a reason when the stream should be considered lost.

        A stream may take a moment to get going (PulseAudio's null sinks: 1-2 s; Bluetooth more), so for
        ``first_block_timeout_s`` after opening it is only waited for. After that it must have moved audio,
        and must keep doing so: ``stall_s`` without a block is a lost device even if no error was reported.
        """
        opened = self._opened_at
        if opened is None or now - opened < self.first_block_timeout_s:
            return None
        last = self._last_activity()
        if last is None or last < opened:
            return f"the {self.kind} device moved no audio within {self.first_block_timeout_s:.0f} s of opening it"
        if now - last > self.stall_s:
            return f"the {self.kind} device moved no audio for {now - last:.1f} s"
        return None

    @property
    def check_interval_s(self) -> float:
        return max(0.05, self.cfg.block_ms / 1000 * 5)

    # -- thread-safe notifications -------------------------------------------------------------------

    def _lost_threadsafe(self, reason: str) -> None:
        """A PortAudio thread says the stream died (finished callback)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._lost, reason)

    def _lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        if self._wakeup is not None:
            self._wakeup.set()

    def _flowing(self) -> None:
        """Audio moves again: report it once, and start the next backoff from the beginning."""
        self._backoff = self.cfg.reopen_backoff_s
        if self.up is not True:
            self.up = True
            self.last_error = ""
            log_event(_log, "audio_device", "%s device is delivering audio", self.kind, DEVICE=self.device_label)
            self._report(True, "")

    def _down(self, reason: str) -> None:
        self.last_error = reason
        if self.up is not False:
            self.up = False
            log_event(_log, "audio_device", "%s device lost: %s", self.kind, reason, level=30,
                      DEVICE=self.device_label, REASON=reason)
            self._report(False, reason)
        else:
            _log.info("%s device still unavailable: %s", self.kind, reason)

    def _report(self, up: bool, reason: str) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(up, reason)
        except Exception:
            _log.exception("%s state handler failed", self.kind)

    @property
    def device_label(self) -> str:
        return str(self.cfg.input_device if self.kind == "input" else self.cfg.output_device)

    # -- the loop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to close the device and return (call on the event loop)."""
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def _pause(self, seconds: float) -> None:
        assert self._wakeup is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        self._wakeup.clear()

    async def run(self) -> None:
        """Keep the device open until :meth:`stop`; never raises for device trouble."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        try:
            while not self._stopping:
                if self.opens:
                    self.reopen_attempts += 1
                self.opens += 1
                self._lost_reason = None
                self._wakeup.clear()
                try:
                    await self._open()
                except Exception as exc:
                    await self._close()
                    self._down(describe_error(exc))
                else:
                    try:
                        reason = await self._watch()
                    except Exception as exc:  # a bug here must cost a reopen, not the microphone for good
                        _log.exception("%s device supervision failed", self.kind)
                        reason = f"internal error: {describe_error(exc)}"
                    await self._close()
                    if reason is None:
                        break
                    self._down(reason)
                if self._stopping:
                    break
                await self._pause(self._backoff)
                self._backoff = min(self._backoff * 2, self.cfg.reopen_backoff_max_s)
        finally:
            await self._close()

    async def _watch(self) -> str | None:
        assert self._wakeup is not None
        while True:
            if self._stopping:
                return None
            if self._lost_reason is not None:
                return self._lost_reason
            reason = self._check(time.monotonic())
            if reason is not None:
                return reason
            await self._pause(self.check_interval_s)


class _Callbacks:
    """Whether this process can give PortAudio a callback at all (learnt once)."""

    refused = False


def callbacks_refused() -> bool:
    return _Callbacks.refused


def note_callbacks_refused(exc: MemoryError) -> None:
    """cffi could not create a callback: systemd's ``MemoryDenyWriteExecute=yes`` (or a kernel MDWE policy)."""
    if not _Callbacks.refused:
        _Callbacks.refused = True
        _log.warning("audio callbacks are not possible here (%s); moving audio with blocking reads and "
                     "writes in threads instead", describe_error(exc).split(".")[0])


class Pump:
    """A daemon thread that moves audio with blocking ``read()``/``write()`` calls, one block per ``step``.

    The fallback for processes where cffi cannot create PortAudio callbacks. ``on_error`` is called (from
    the thread) when ``step`` raises while the pump was not being stopped, i.e. the device failed.
    """

    def __init__(self, name: str, step: Callable[[], None], on_error: Callable[[BaseException], None]) -> None:
        self._step = step
        self._on_error = on_error
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:
                if not self._stopping.is_set():
                    self._on_error(exc)
                return

    def stop(self, limit_s: float) -> bool:
        """Ask the thread to end and wait for it; False if it is stuck in a read or write."""
        self._stopping.set()
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(limit_s)
        return not self._thread.is_alive()


class OpenStream:
    """A started sounddevice stream, and its pump when it runs without callbacks."""

    def __init__(self, stream: Any, pump: Pump | None = None) -> None:
        self.stream = stream
        self.pump = pump

    @property
    def blocking(self) -> bool:
        return self.pump is not None


def close_quietly(opened: OpenStream | Any) -> None:
    """Close a stream (stopping its pump first), ignoring every error; runs in a daemon thread."""
    from kioskd.audio.devices import PORTAUDIO_LOCK

    stream: Any = opened
    if isinstance(opened, OpenStream):
        stream = opened.stream
        if opened.pump is not None and not opened.pump.stop(1.0):
            return  # a read or write that never returns: closing under it could crash PortAudio
    with PORTAUDIO_LOCK, contextlib.suppress(Exception):
        stream.close(ignore_errors=True)
