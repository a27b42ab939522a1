"""The microphone: an ALSA input stream whose blocks reach the event loop as 16 kHz and 24 kHz mono PCM.

The PortAudio callback runs on PortAudio's thread and must never block: it copies the block into a bounded
hand-over queue and wakes the loop with ``call_soon_threadsafe``; when the loop falls behind and the queue is
full the block is dropped and counted, never waited for. Mixing, resampling and ``on_block`` all happen on
the loop, where the rest of kioskd's state lives.

:class:`FileCapture` is the same thing fed from a WAV file paced by the loop's clock (``kioskd demo``, tests),
so the daemon runs the same code with or without a sound card.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kioskd.audio.devices import PORTAUDIO_LOCK, DeviceInfo, _sounddevice, resolve_device
from kioskd.audio.dsp import CaptureConverter, Int16Array, to_int16
from kioskd.audio.supervise import (
    DeviceLink,
    OnState,
    OpenStream,
    Pump,
    call_blocking,
    callbacks_refused,
    close_quietly,
    note_callbacks_refused,
)
from kioskd.audio.wav import read_wav
from kioskd.config import AudioConfig
from kioskd.logs import get_logger

_log = get_logger("audio.capture")


@dataclass(frozen=True, slots=True)
class CaptureBlock:
    """One block of microphone audio, converted, with its place on the shared timelines.

    ``end16k``/``end24k`` count the samples produced since start-up up to the end of this block. A position
    means the same instant on both timelines (16 kHz sample ``p`` is 24 kHz sample ``p * 3 / 2``): the
    wake detector reports where a wake word ended at 16 kHz and the pre-roll ring is cut at the matching
    24 kHz position. (The two counts themselves differ by a few ms: each resampler holds back its filter's
    look-ahead.) ``time`` is the ``time.monotonic()`` at which the device handed the block over.
    """

    pcm16k: Int16Array
    pcm24k: Int16Array
    end16k: int
    end24k: int
    time: float


@dataclass(frozen=True, slots=True)
class CaptureStats:
    blocks: int
    drops: int
    overflows: int
    reopen_attempts: int
    last_block_time: float | None
    up: bool | None
    last_error: str


OnBlock = Callable[[CaptureBlock], None]


class _Delivery:
    """Hands blocks from the device thread to the loop, for one opened stream."""

    def __init__(self, owner: _BlockSink, loop: asyncio.AbstractEventLoop, max_blocks: int) -> None:
        self.queue: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self.max_blocks = max_blocks
        self.loop = loop
        self.owner = owner
        self.closing = False
        self.last_time: float | None = None
        self.rate: int | None = None  # set once the device is resolved, before the stream starts

    # Runs on the PortAudio thread: no locks, no logging, no waiting.
    def callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self.hand_over(indata.copy(), bool(status and status.input_overflow))

    def hand_over(self, block: np.ndarray, overflowed: bool) -> None:
        """Queue a block (owned by us from now on) for the loop, or drop and count it when the queue is full."""
        now = time.monotonic()
        self.last_time = now
        if overflowed:
            self.owner.overflows += 1
        if len(self.queue) >= self.max_blocks:
            self.owner.drops += 1
            return
        self.queue.append((block, now))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            self.loop.call_soon_threadsafe(self.owner.drain, self)

    def finished(self) -> None:
        if not self.closing:
            self.owner.stream_finished(self)


class _BlockSink(DeviceLink):
    """What :class:`Capture` and :class:`FileCapture` share: conversion, counters, delivery to ``on_block``."""

    kind = "input"

    def __init__(
        self,
        cfg: AudioConfig,
        on_block: OnBlock,
        on_state: OnState | None,
        loop: asyncio.AbstractEventLoop | None,
        *,
        stall_blocks: int = 50,
        first_block_timeout_s: float = 6.0,
    ) -> None:
        super().__init__(cfg, on_state, loop, stall_blocks=stall_blocks, first_block_timeout_s=first_block_timeout_s)
        self._on_block = on_block
        self._converter: CaptureConverter | None = None
        self._current: _Delivery | None = None
        self.blocks = 0
        self.drops = 0
        self.overflows = 0
        self.last_block_time: float | None = None
        self._handler_failures = 0

    @property
    def stats(self) -> CaptureStats:
        return CaptureStats(
            blocks=self.blocks,
            drops=self.drops,
            overflows=self.overflows,
            reopen_attempts=self.reopen_attempts,
            last_block_time=self.last_block_time,
            up=self.up,
            last_error=self.last_error,
        )

    def _converter_for(self, rate: int, use_channels: list[int]) -> CaptureConverter:
        if self._converter is None:
            self._converter = CaptureConverter(rate, use_channels)
        else:
            self._converter.set_device_rate(rate)
            self._converter.use_channels = use_channels
        return self._converter

    def drain(self, delivery: _Delivery) -> None:
        """On the loop: convert every waiting block and hand it to ``on_block``."""
        queue = delivery.queue
        while queue:
            frames, when = queue.popleft()
            if delivery is not self._current or delivery.rate is None:
                continue  # a block from a stream already closed
            if self._converter is None or self._converter.device_rate != delivery.rate:
                self._converter_for(delivery.rate, list(self.cfg.use_channels))
            self._deliver(frames, when)

    def _deliver(self, frames: np.ndarray, when: float) -> None:
        assert self._converter is not None
        self.blocks += 1
        self.last_block_time = when
        if self.up is not True:
            self._flowing()
        try:
            converted = self._converter.convert(frames)
            block = CaptureBlock(converted.pcm16k, converted.pcm24k, converted.end16k, converted.end24k, when)
            self._on_block(block)
        except Exception:  # one bad block (or handler) must not stop the microphone
            self._handler_failures += 1
            if self._handler_failures <= 3 or self._handler_failures % 1000 == 0:
                _log.exception("microphone block handling failed (%d times so far)", self._handler_failures)

    def stream_finished(self, delivery: _Delivery) -> None:
        self._lost_threadsafe("the input stream stopped (device error or disconnect)")


class Capture(_BlockSink):
    """The configured ALSA microphone, supervised: reopened with backoff whenever it fails or falls silent.

    ``on_block`` receives every :class:`CaptureBlock` on the loop; ``on_state(up, reason)`` is called when
    audio starts flowing (``True, ""``) and when the device is lost (``False, reason``). ``await run()``
    until :meth:`stop`. ``stall_blocks``: how many blocks' time without audio counts as a lost device;
    ``first_block_timeout_s``: how long a freshly opened stream may take to deliver (PulseAudio needs ~2 s).
    """

    def __init__(
        self,
        cfg: AudioConfig,
        on_block: OnBlock,
        on_state: OnState | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        stall_blocks: int = 50,
        first_block_timeout_s: float = 6.0,
    ) -> None:
        super().__init__(cfg, on_block, on_state, loop, stall_blocks=stall_blocks,
                         first_block_timeout_s=first_block_timeout_s)
        self._stream: OpenStream | None = None
        self.device: DeviceInfo | None = None
        self.rate: int | None = None

    def _open_blocking(self, delivery: _Delivery) -> tuple[OpenStream, DeviceInfo, int]:
        sd = _sounddevice()
        device = resolve_device(self.cfg.input_device, "input")
        if device.max_input_channels < self.cfg.input_channels:
            raise ValueError(
                f"{device.name} has {device.max_input_channels} input channels, "
                f"audio.input_channels asks for {self.cfg.input_channels}"
            )
        rate = self.cfg.input_rate or device.default_samplerate
        blocksize = max(1, round(rate * self.cfg.block_ms / 1000))
        delivery.rate = rate
        settings = {"device": device.index, "samplerate": rate, "channels": self.cfg.input_channels,
                    "dtype": "int16", "blocksize": blocksize, "latency": "high"}
        pump: Pump | None = None
        with PORTAUDIO_LOCK:
            stream = None
            if not callbacks_refused():
                try:
                    stream = sd.InputStream(**settings, callback=delivery.callback, finished_callback=delivery.finished)
                except MemoryError as exc:
                    note_callbacks_refused(exc)
            if stream is None:
                stream = sd.InputStream(**settings)

                def read() -> None:
                    block, overflowed = stream.read(blocksize)
                    delivery.hand_over(block, bool(overflowed))

                pump = Pump("kioskd-capture", read, lambda _exc: delivery.finished())
            try:
                stream.start()
            except Exception:
                stream.close(ignore_errors=True)
                raise
        if pump is not None:
            pump.start()
        return OpenStream(stream, pump), device, rate

    async def _open(self) -> None:
        assert self._loop is not None
        delivery = _Delivery(self, self._loop, self.cfg.capture_queue_blocks)

        def abandon(result: tuple[OpenStream, DeviceInfo, int]) -> None:
            delivery.closing = True
            close_quietly(result[0])

        self._current = delivery
        self._opened_at = time.monotonic()
        stream, device, rate = await call_blocking(
            lambda: self._open_blocking(delivery), limit_s=self.open_timeout_s, what="open-input", abandon=abandon
        )
        self._stream, self.device, self.rate = stream, device, rate
        self._opened_at = time.monotonic()
        _log.info("microphone open: %s at %d Hz, %d channel(s), using %s%s", device.name, rate,
                  self.cfg.input_channels, list(self.cfg.use_channels), " (blocking reads)" if stream.blocking else "")

    async def _close(self) -> None:
        stream, delivery = self._stream, self._current
        self._stream = None
        self._current = None
        self._opened_at = None
        if delivery is not None:
            delivery.closing = True
        if stream is None:
            return
        with contextlib.suppress(Exception):
            await call_blocking(lambda: close_quietly(stream), limit_s=self.close_timeout_s, what="close-input")

    def _last_activity(self) -> float | None:
        delivery = self._current
        return None if delivery is None else delivery.last_time


class FileCapture(_BlockSink):
    """A WAV file as the microphone, paced in real time by the loop's clock, then endless silence.

    The file may have any rate and channel count: when its channel count equals ``audio.input_channels`` the
    configured ``use_channels`` are mixed, otherwise all its channels are. ``finished`` is set when the last
    sample of the file has been delivered.
    """

    def __init__(
        self,
        cfg: AudioConfig,
        on_block: OnBlock,
        on_state: OnState | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        path: Path,
    ) -> None:
        super().__init__(cfg, on_block, on_state, loop)
        clip = read_wav(path)
        self.path = path
        self.rate = clip.rate
        use = list(cfg.use_channels) if clip.channels == cfg.input_channels else list(range(clip.channels))
        frames = clip.frames if clip.frames.ndim == 2 else clip.frames[:, None]
        self._pcm = to_int16(frames)
        self._use = use
        self._pos = 0
        self.finished = asyncio.Event()
        self.device = None

    async def _open(self) -> None:
        self._converter_for(self.rate, self._use)
        self._current = _Delivery(self, asyncio.get_running_loop(), 1)
        self._current.rate = self.rate

    async def _close(self) -> None:
        self._current = None

    async def _watch(self) -> str | None:
        loop = asyncio.get_running_loop()
        block = max(1, round(self.rate * self.cfg.block_ms / 1000))
        silence = np.zeros((block, self._pcm.shape[1]), dtype=np.int16)
        start = loop.time()
        n = 0
        while not self._stopping:
            frames = self._pcm[self._pos : self._pos + block]
            self._pos += len(frames)
            if len(frames) < block:
                frames = np.concatenate([frames, silence[: block - len(frames)]])
            self._deliver(frames, time.monotonic())
            if self._pos >= len(self._pcm) and not self.finished.is_set():
                self.finished.set()
            n += 1
            delay = start + n * block / self.rate - loop.time()
            if delay > 0:
                await self._pause(delay)
        return None
