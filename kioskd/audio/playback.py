"""The speaker: a jitter buffer filled by the event loop and emptied by the output device's callback.

Reply audio arrives in bursts over the network; :class:`JitterBuffer` holds it and lets the device take
exactly one block per callback. Three things matter for a conversation and are what this module is for:

* barge-in: :meth:`JitterBuffer.flush` drops everything queued at once, so the next block the device asks
  for is silent (no draining of what was already queued);
* truncation: the buffer counts, per assistant item, the samples actually handed to the device
  (:meth:`JitterBuffer.played_samples`), so the server can be told how much of a reply was really heard;
* one output stream for the daemon's lifetime: :class:`Playback` never reopens the device per reply (USB
  and Bluetooth sinks clip the first few hundred milliseconds after a reopen), only after an error.

The buffer's lock is held for a few microseconds by either side (copying one block), never across I/O.
Earcons are mixed on top of whatever plays, from the same callback, so a chime never waits for capture or
for the network. :class:`FilePlayback` pulls from the same buffer in real time into a WAV file (the demo).

The device pulls through a PortAudio callback. Where cffi cannot create callbacks (systemd's
``MemoryDenyWriteExecute=yes``), a thread loops ``buffer.pull(block); stream.write(block)`` instead; the
buffer is the same, flushes then take effect after the device's own short buffer (~40 ms) rather than
within one block.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kioskd.audio.devices import PORTAUDIO_LOCK, DeviceInfo, _sounddevice, resolve_device
from kioskd.audio.dsp import REALTIME_RATE, Int16Array, Resampler, resample, to_float, to_int16
from kioskd.audio.earcons import Earcon, Earcons
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
from kioskd.audio.wav import WavWriter
from kioskd.config import AudioConfig
from kioskd.logs import get_logger

_log = get_logger("audio.playback")
_KEEP_ITEMS = 64  # finished items whose played counts stay queryable
OutputHook = Callable[[Int16Array], None]


@dataclass
class _Item:
    received24: int = 0  # 24 kHz samples enqueued
    played: int = 0  # device-rate samples handed to the device
    queued: int = 0  # device-rate samples waiting
    complete: bool = False
    started: bool = False
    cancelled: bool = False


@dataclass
class _Chunk:
    item_id: str | None  # None for an earcon
    pcm: Int16Array
    pos: int = 0


@dataclass(frozen=True, slots=True)
class PlaybackStats:
    blocks: int
    underruns: int
    overflows: int
    flushes: int
    discarded_chunks: int
    reopen_attempts: int
    up: bool | None
    last_error: str


class JitterBuffer:
    """Reply audio between the loop (writer) and the output callback (reader).

    Writer side (the event loop): :meth:`enqueue`, :meth:`end_item`, :meth:`flush`, :meth:`play_earcon`.
    Reader side (the device thread): :meth:`pull`. Queries: :meth:`played_samples`, :meth:`current_item`.

    An item starts playing once ``jitter_target_ms`` of it is buffered, or at once when it is complete; if
    it runs dry before it is complete, that is an underrun and it waits for the target again. Audio for an
    item that was flushed is ignored, so deltas still in flight after a barge-in are never heard.
    """

    def __init__(
        self,
        cfg: AudioConfig | None = None,
        *,
        jitter_target_ms: int | None = None,
        capacity_s: float = 300.0,
        rate: int = REALTIME_RATE,
        earcons: Earcons | None = None,
    ) -> None:
        self._lock = threading.Lock()
        if jitter_target_ms is None:
            jitter_target_ms = cfg.jitter_target_ms if cfg is not None else 60
        self.jitter_target_ms = jitter_target_ms
        self.earcons = earcons
        self.capacity_s = capacity_s
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._earcons: collections.deque[_Chunk] = collections.deque()
        self._items: collections.OrderedDict[str, _Item] = collections.OrderedDict()
        self._last_enqueued: str | None = None
        self._last_played: str | None = None
        self._queued_total = 0
        self._mix = np.zeros(0, dtype=np.int32)
        self.on_output: OutputHook | None = None
        self.underruns = 0
        self.overflows = 0
        self.flushes = 0
        self.discarded = 0
        self.blocks = 0
        self.last_pull_time: float | None = None
        self._set_rate(rate)

    # -- configuration ---------------------------------------------------------------------------------

    def _set_rate(self, rate: int) -> None:
        self.rate = rate
        self._resampler = Resampler(REALTIME_RATE, rate)
        self._target = rate * self.jitter_target_ms // 1000
        self._capacity = int(rate * self.capacity_s)

    def set_output_rate(self, rate: int) -> None:
        """The device runs at ``rate``; audio queued for another rate is dropped."""
        if rate == self.rate:
            return
        with self._lock:
            self._drop_queued()
            self._earcons.clear()
            self._set_rate(rate)

    # -- writer side -----------------------------------------------------------------------------------

    def _item(self, item_id: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _Item()
            while len(self._items) > _KEEP_ITEMS:
                oldest, state = next(iter(self._items.items()))
                if state.queued and not state.cancelled:
                    break
                del self._items[oldest]
        return item

    def _append(self, item_id: str, item: _Item, pcm: Int16Array) -> None:
        """Under the lock: queue device-rate audio for ``item``."""
        if len(pcm) == 0:
            return
        if self._queued_total + len(pcm) > self._capacity:
            self.overflows += 1
            return
        self._chunks.append(_Chunk(item_id, pcm))
        item.queued += len(pcm)
        self._queued_total += len(pcm)
        if item.queued >= self._target:
            item.started = True

    def enqueue(self, item_id: str, pcm24k: Int16Array) -> None:
        """Queue reply audio (mono int16 at 24 kHz) for assistant item ``item_id``."""
        if self._items.get(item_id, _Item()).cancelled:
            self.discarded += 1
            return
        if item_id != self._last_enqueued:
            self._finish_resampler()
            self._last_enqueued = item_id
        pcm = to_int16(self._resampler.process(to_float(np.asarray(pcm24k, dtype=np.int16))))
        with self._lock:
            item = self._item(item_id)
            item.received24 += len(pcm24k)
            self._append(item_id, item, pcm)

    def _finish_resampler(self) -> None:
        """Flush the resampler's tail into the item it belongs to."""
        previous = self._last_enqueued
        if previous is None:
            return
        tail = to_int16(self._resampler.process(np.zeros(0, dtype=np.float32), last=True))
        self._last_enqueued = None
        with self._lock:
            item = self._items.get(previous)
            if item is not None and not item.cancelled:
                self._append(previous, item, tail)

    def end_item(self, item_id: str) -> None:
        """All audio of ``item_id`` has arrived: play what is buffered even below the jitter target."""
        if item_id == self._last_enqueued:
            self._finish_resampler()
        with self._lock:
            item = self._item(item_id)
            item.complete = True
            item.started = True

    def flush(self) -> None:
        """Stop reply audio now: the next block handed to the device has none of it (earcons go on)."""
        with self._lock:
            self._drop_queued()
            self.flushes += 1
        self._resampler.reset()
        self._last_enqueued = None

    def _drop_queued(self) -> None:
        self._chunks.clear()
        self._queued_total = 0
        for item in self._items.values():
            if item.queued or not item.complete:
                item.cancelled = True
            item.queued = 0
        self._last_played = None

    def play_earcon(self, sound: str | Earcon | Int16Array) -> None:
        """Mix a sound into the output, on top of any reply audio.

        ``sound`` is mono int16 PCM at 24 kHz, or the name of one of :attr:`earcons` (``"wake"``, ``"end"``,
        ``"error"``, ``"budget"``); a name with no earcons attached is ignored (logged once).
        """
        if isinstance(sound, str | Earcon):
            if self.earcons is None:
                _log.warning("no earcons attached to the jitter buffer; %s not played", sound)
                return
            pcm24k = self.earcons[sound]
        else:
            pcm24k = sound
        pcm = to_int16(resample(to_float(np.asarray(pcm24k, dtype=np.int16)), REALTIME_RATE, self.rate))
        with self._lock:
            self._earcons.append(_Chunk(None, pcm))

    def stop_earcons(self) -> None:
        with self._lock:
            self._earcons.clear()

    # -- queries (any thread) ------------------------------------------------------------------------

    def played_samples(self, item_id: str) -> int:
        """24 kHz samples of ``item_id`` handed to the device so far (never more than were received)."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        return min(item.received24, item.played * REALTIME_RATE // self.rate)

    def played_ms(self, item_id: str) -> int:
        return self.played_samples(item_id) * 1000 // REALTIME_RATE

    def current_item(self) -> str | None:
        """The assistant item being heard or waiting to be heard; None when no reply audio is pending."""
        with self._lock:
            if self._chunks:
                return self._chunks[0].item_id
            last = self._last_played if self._last_played is not None else self._last_enqueued
            if last is not None:
                item = self._items.get(last)
                if item is not None and not item.complete and not item.cancelled:
                    return last
            return None

    @property
    def queued_ms(self) -> int:
        return self._queued_total * 1000 // self.rate

    @property
    def earcon_playing(self) -> bool:
        return bool(self._earcons)

    # -- reader side (the device thread) ---------------------------------------------------------------

    def pull(self, out: np.ndarray) -> None:
        """Fill ``out`` (int16, shape (frames,) or (frames, channels)) with the next block of output."""
        frames = out.shape[0]
        if self._mix.shape[0] != frames:
            self._mix = np.zeros(frames, dtype=np.int32)
        mix = self._mix
        mix[:] = 0
        with self._lock:
            filled = self._take_reply(mix, frames)
            if filled < frames:
                self._note_short_block()
            if self._earcons:
                self._take_earcons(mix, frames)
            self.blocks += 1
        np.clip(mix, -32768, 32767, out=mix)
        if out.ndim == 1:
            out[:] = mix
        else:
            out[:] = mix[:, None]
        self.last_pull_time = time.monotonic()
        hook = self.on_output
        if hook is not None:
            with contextlib.suppress(Exception):
                hook(out if out.ndim == 1 else out[:, 0])

    def _take_reply(self, mix: np.ndarray, frames: int) -> int:
        filled = 0
        chunks = self._chunks
        while filled < frames and chunks:
            chunk = chunks[0]
            assert chunk.item_id is not None
            item = self._items[chunk.item_id]
            if not item.started:
                break
            take = min(frames - filled, len(chunk.pcm) - chunk.pos)
            mix[filled : filled + take] = chunk.pcm[chunk.pos : chunk.pos + take]
            chunk.pos += take
            filled += take
            item.played += take
            item.queued -= take
            self._queued_total -= take
            self._last_played = chunk.item_id
            if chunk.pos >= len(chunk.pcm):
                chunks.popleft()
        return filled

    def _note_short_block(self) -> None:
        """A block that ran out of reply audio: an underrun if the playing item is not finished."""
        last = self._last_played
        if last is None:
            return
        item = self._items.get(last)
        if item is None or item.cancelled:
            return
        if not item.complete and item.queued == 0 and item.started:
            self.underruns += 1
            item.started = False  # wait for the jitter target again

    def _take_earcons(self, mix: np.ndarray, frames: int) -> None:
        filled = 0
        earcons = self._earcons
        while filled < frames and earcons:
            chunk = earcons[0]
            take = min(frames - filled, len(chunk.pcm) - chunk.pos)
            mix[filled : filled + take] += chunk.pcm[chunk.pos : chunk.pos + take]
            chunk.pos += take
            filled += take
            if chunk.pos >= len(chunk.pcm):
                earcons.popleft()

    def stats(self) -> tuple[int, int, int, int, int]:
        return self.blocks, self.underruns, self.overflows, self.flushes, self.discarded

    def counters(self) -> dict[str, int]:
        """For /status and /metrics."""
        return {
            "playback_blocks": self.blocks,
            "playback_underruns": self.underruns,
            "playback_overflows": self.overflows,
            "playback_flushes": self.flushes,
            "playback_discarded_chunks": self.discarded,
            "playback_queued_ms": self.queued_ms,
        }


class _PlaybackBase(DeviceLink):
    kind = "output"

    def __init__(
        self,
        cfg: AudioConfig,
        buffer: JitterBuffer,
        on_state: OnState | None,
        loop: asyncio.AbstractEventLoop | None,
        *,
        stall_blocks: int = 50,
        first_block_timeout_s: float = 6.0,
    ) -> None:
        super().__init__(cfg, on_state, loop, stall_blocks=stall_blocks, first_block_timeout_s=first_block_timeout_s)
        self.buffer = buffer
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run :meth:`run` as a task of the running loop (``stop()`` ends it; ``await wait_closed()``)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"kioskd-{self.kind}")

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    @property
    def stats(self) -> PlaybackStats:
        blocks, underruns, overflows, flushes, discarded = self.buffer.stats()
        return PlaybackStats(blocks, underruns, overflows, flushes, discarded, self.reopen_attempts, self.up,
                             self.last_error)


class Playback(_PlaybackBase):
    """The configured output device, kept open and fed from ``buffer``; reopened with backoff on errors.

    ``on_state(up, reason)`` reports when blocks are being pulled and when the device is lost; reply audio
    queued when the device is lost is dropped (it could not be heard, and must not be counted as played).
    """

    def __init__(
        self,
        cfg: AudioConfig,
        buffer: JitterBuffer,
        on_state: OnState | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        stall_blocks: int = 50,
        first_block_timeout_s: float = 6.0,
    ) -> None:
        super().__init__(cfg, buffer, on_state, loop, stall_blocks=stall_blocks,
                         first_block_timeout_s=first_block_timeout_s)
        self._stream: OpenStream | None = None
        self._closing: threading.Event | None = None
        self._pulled_since_open = False
        self.device: DeviceInfo | None = None
        self.rate: int | None = None
        self.channels = 0

    def _open_blocking(self, closing: threading.Event) -> tuple[OpenStream, DeviceInfo, int, int]:
        sd = _sounddevice()
        device = resolve_device(self.cfg.output_device, "output")
        rate = self.cfg.output_rate or device.default_samplerate
        channels = 1 if device.max_output_channels < 2 else 2
        blocksize = max(1, round(rate * self.cfg.block_ms / 1000))
        self.buffer.set_output_rate(rate)
        buffer = self.buffer
        loop = self._loop
        assert loop is not None

        def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            buffer.pull(outdata)
            if not self._pulled_since_open:
                self._pulled_since_open = True
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._first_pull)

        def finished() -> None:
            if not closing.is_set():
                self._lost_threadsafe("the output stream stopped (device error or disconnect)")

        settings = {"device": device.index, "samplerate": rate, "channels": channels, "dtype": "int16",
                    "blocksize": blocksize, "latency": "low"}
        pump: Pump | None = None
        with PORTAUDIO_LOCK:
            stream = None
            if not callbacks_refused():
                try:
                    stream = sd.OutputStream(**settings, callback=callback, finished_callback=finished)
                except MemoryError as exc:
                    note_callbacks_refused(exc)
            if stream is None:
                stream = sd.OutputStream(**settings)
                block = np.zeros((blocksize, channels), dtype=np.int16)

                def write() -> None:
                    callback(block, blocksize, None, None)
                    stream.write(block)  # waits until the device has room for it

                pump = Pump("kioskd-playback", write, lambda _exc: finished())
            try:
                stream.start()
            except Exception:
                stream.close(ignore_errors=True)
                raise
        if pump is not None:
            pump.start()
        return OpenStream(stream, pump), device, rate, channels

    def _first_pull(self) -> None:
        if self._stream is not None:
            self._flowing()

    async def _open(self) -> None:
        closing = threading.Event()
        self._closing = closing
        self._pulled_since_open = False
        self._opened_at = time.monotonic()

        def abandon(result: tuple[OpenStream, DeviceInfo, int, int]) -> None:
            closing.set()
            close_quietly(result[0])

        stream, device, rate, channels = await call_blocking(
            lambda: self._open_blocking(closing), limit_s=self.open_timeout_s, what="open-output", abandon=abandon
        )
        self._stream, self.device, self.rate, self.channels = stream, device, rate, channels
        self._opened_at = time.monotonic()
        if self._pulled_since_open:
            self._flowing()
        _log.info("speaker open: %s at %d Hz, %d channel(s)%s", device.name, rate, channels,
                  " (blocking writes)" if stream.blocking else "")

    async def _close(self) -> None:
        stream, closing = self._stream, self._closing
        self._stream = None
        self._opened_at = None
        if closing is not None:
            closing.set()
        if stream is None:
            return
        self.buffer.flush()
        with contextlib.suppress(Exception):
            await call_blocking(lambda: close_quietly(stream), limit_s=self.close_timeout_s, what="close-output")

    def _last_activity(self) -> float | None:
        return self.buffer.last_pull_time


class FilePlayback(_PlaybackBase):
    """What would be played, written to a mono 16-bit WAV in real time (the demo's speaker)."""

    def __init__(
        self,
        cfg: AudioConfig,
        buffer: JitterBuffer,
        on_state: OnState | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        path: Path,
    ) -> None:
        super().__init__(cfg, buffer, on_state, loop)
        self.path = path
        self.rate = cfg.output_rate or REALTIME_RATE
        self._writer: WavWriter | None = None
        self.device = None

    async def _open(self) -> None:
        self.buffer.set_output_rate(self.rate)
        self._writer = WavWriter(self.path, self.rate)

    async def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def _watch(self) -> str | None:
        loop = asyncio.get_running_loop()
        block = max(1, round(self.rate * self.cfg.block_ms / 1000))
        out = np.zeros(block, dtype=np.int16)
        start = loop.time()
        n = 0
        while not self._stopping:
            self.buffer.pull(out)
            assert self._writer is not None
            self._writer.write(out)
            if n == 0:
                self._flowing()
            n += 1
            delay = start + n * block / self.rate - loop.time()
            if delay > 0:
                await self._pause(delay)
        return None
