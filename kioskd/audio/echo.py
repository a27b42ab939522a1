"""Echo handling on the uplink: the assistant must not interrupt itself, the visitor always can.

On a kiosk the speaker sits centimetres from the microphone. Whatever kioskd plays comes back into the
microphone a few tens of milliseconds later, only a few dB quieter, and without help the service's voice
activity detector takes it for the visitor: the assistant "barges in" on itself and answers its own words.
This module removes that echo from the 24 kHz uplink before it reaches the pre-roll ring, the uplink queue
and any voice detector, in one of three ways (``audio.echo_cancellation``):

``builtin``
    In-process acoustic echo cancellation with the WebRTC audio processing module (AEC3 and a high-pass
    filter), as shipped in the ``livekit`` wheel (``livekit.rtc.AudioProcessingModule``). It is fed with the
    exact PCM the output callback handed to the device (:class:`ReferenceTap`), so it never guesses what
    was played. It was chosen by measurement (``bench/echo.py``): on the audio rig it removes the echo of a
    reply far below the service's speech threshold from the first syllable on, keeps a visitor speaking
    over the reply audible, and costs about 1-2 % of one core while something plays and nothing while
    nothing does. Wheels exist for x86_64 and aarch64 (a Raspberry Pi 4/5 on 64-bit Raspberry Pi OS).
``system``
    kioskd does nothing itself: the sound server cancels the echo. The operator routes kioskd through
    PulseAudio's (or PipeWire's) echo canceller, e.g. for PulseAudio::

        load-module module-echo-cancel aec_method=webrtc source_master=<mic> sink_master=<speaker> \\
            source_name=kiosk_ec_mic sink_name=kiosk_ec_speaker use_volume_sharing=false
        set-default-source kiosk_ec_mic
        set-default-sink kiosk_ec_speaker

    and sets ``audio.input_device``/``audio.output_device`` to ``pulse`` (or ``PULSE_SOURCE``/``PULSE_SINK``
    in the unit's environment) so that both streams go through the canceller's source and sink. PipeWire's
    equivalent is ``libpipewire-module-echo-cancel``. The Ansible role must install and configure that.
``off``
    Nothing: for headsets, or hardware whose microphone array cancels the echo itself.

A configurable fallback, the *echo gate* (``audio.echo_gate = "on"``), is for hardware where cancellation is
off or too weak: while kioskd plays, each 10 ms uplink frame passes only if it is louder than the loudest
playback of the last moments (:data:`GATE_WINDOW_EXTRA_MS` beyond ``echo_delay_ms``) plus
``audio.echo_gate_db``; quieter frames are replaced by silence. The echo (which is at most as loud as the
playback plus the speaker-to-microphone coupling) can then not open a turn, but neither can a visitor who
speaks more softly than that level: the gate costs barge-in sensitivity, which is why it is off by default
and why cancellation is the real answer. Set ``echo_gate_db`` a few dB above the device's coupling
(measure: play a reply, compare microphone and playback levels). When nothing plays the gate is open.

Threads: the reference arrives on the output device's thread. :meth:`ReferenceTap.push` only copies the block
into a bounded deque (append and popleft are atomic in CPython), never waits and never logs; all signal
processing runs on the event loop in :meth:`UplinkEcho.process`, called from ``Daemon.on_block`` for every
captured block. Rates: the reference comes at the output device's rate and is resampled to 24 kHz here;
the canceller works in 10 ms frames of the 24 kHz uplink. A block whose length is not a whole number of
frames delays the uplink by less than one frame (once), never changes its length.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kioskd.audio.dsp import REALTIME_RATE, Int16Array, Resampler, to_float, to_int16
from kioskd.config import AudioConfig
from kioskd.logs import get_logger, log_event

_log = get_logger("audio.echo")

FRAME = REALTIME_RATE // 100  # 10 ms at 24 kHz: the canceller's and the gate's unit
HOLD_S = 1.0
"""How long after the last audible playback the canceller keeps running (echo tail and device latencies)."""
GATE_WINDOW_EXTRA_MS = 250
"""The gate compares the uplink with the playback of the last ``echo_delay_ms`` + this many milliseconds."""
_AUDIBLE = 4  # |sample| above this (int16) counts as playing: dither and rounding stay below
_TAP_BLOCKS = 512  # ~10 s of 20 ms blocks: plenty for a loop that drains every 20 ms
_SILENCE_DBFS = -120.0


class CancellerUnavailable(RuntimeError):
    """The configured canceller cannot run here (its package is missing or failed to start)."""


class Canceller(Protocol):
    """An acoustic echo canceller on mono int16 10 ms frames at 24 kHz."""

    name: str

    def render(self, frame: Int16Array) -> None:
        """The next 10 ms of what was played (the far end)."""
        ...

    def capture(self, frame: Int16Array, delay_ms: int) -> Int16Array:
        """The next 10 ms of the microphone, with the echo removed."""
        ...


class WebRtcCanceller:
    """WebRTC's audio processing module (AEC3 + high-pass) through the ``livekit`` wheel's FFI library.

    ``noise_suppression`` stays off by default: the service runs its own noise reduction on the uplink
    (``realtime.noise_reduction``), and a second one would only thin the visitor's voice further.
    """

    name = "webrtc"

    def __init__(self, *, noise_suppression: bool = False) -> None:
        try:
            from livekit import rtc
        except ImportError as exc:
            raise CancellerUnavailable(
                f"the WebRTC canceller needs the livekit package (pip install livekit): {exc}") from None
        try:
            self._apm = rtc.AudioProcessingModule(
                echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True)
        except Exception as exc:
            raise CancellerUnavailable(f"the WebRTC audio processing module did not start: {exc}") from None
        self._frame_type: Any = rtc.AudioFrame
        self._delay_ms: int | None = None

    def render(self, frame: Int16Array) -> None:
        self._apm.process_reverse_stream(self._frame_type(bytearray(frame.tobytes()), REALTIME_RATE, 1, FRAME))

    def capture(self, frame: Int16Array, delay_ms: int) -> Int16Array:
        self._apm.set_stream_delay_ms(delay_ms)
        audio = self._frame_type(bytearray(frame.tobytes()), REALTIME_RATE, 1, FRAME)
        self._apm.process_stream(audio)
        return np.frombuffer(bytes(audio.data), dtype=np.int16).copy()


class ReferenceTap:
    """What the speaker played, handed from the output callback to the loop.

    :meth:`push` is the :attr:`~kioskd.audio.playback.JitterBuffer.on_output` hook (through
    :meth:`hook_for`): it copies the block and appends it to a bounded deque. If the loop stops draining
    (a stalled microphone), the oldest blocks fall out and are counted in :attr:`dropped`.
    """

    def __init__(self, max_blocks: int = _TAP_BLOCKS) -> None:
        self._blocks: collections.deque[tuple[Int16Array, int]] = collections.deque(maxlen=max_blocks)
        self.dropped = 0
        self.pushed = 0

    def push(self, pcm: Int16Array, rate: int) -> None:
        """Output thread: one block (mono int16 at ``rate``) that was just handed to the device."""
        blocks = self._blocks
        if len(blocks) == blocks.maxlen:
            self.dropped += 1
        blocks.append((np.array(pcm, dtype=np.int16), rate))
        self.pushed += 1

    def hook_for(self, rate_of: Callable[[], int]) -> Callable[[Int16Array], None]:
        """An ``on_output`` hook that tags each block with the device's current rate."""
        def hook(pcm: Int16Array) -> None:
            self.push(pcm, rate_of())

        return hook

    def drain(self) -> list[tuple[Int16Array, int]]:
        """Loop: every block pushed since the last drain, oldest first."""
        out = []
        blocks = self._blocks
        while blocks:
            try:
                out.append(blocks.popleft())
            except IndexError:
                break
        return out


class EchoGate:
    """The fallback: while something plays, silence uplink frames no louder than the playback + ``level_db``.

    Levels are RMS dBFS of 10 ms frames. The playback level is the loudest reference frame of the last
    ``window_ms`` (so the echo's delay need not be known exactly); with nothing audible in that window the
    gate is open. See the module docstring for the trade-off.
    """

    def __init__(self, level_db: float, window_ms: int) -> None:
        self.level_db = level_db
        self.window_frames = max(1, math.ceil(window_ms / 10))
        self._recent: collections.deque[float] = collections.deque(maxlen=self.window_frames)
        self.closed_frames = 0
        self.open_frames = 0

    def note_reference(self, frame: Int16Array) -> None:
        self._recent.append(frame_dbfs(frame))

    def note_silence(self, frames: int) -> None:
        for _ in range(min(frames, self.window_frames)):
            self._recent.append(_SILENCE_DBFS)

    @property
    def playback_dbfs(self) -> float:
        return max(self._recent, default=_SILENCE_DBFS)

    def apply(self, frame: Int16Array) -> Int16Array:
        playback = self.playback_dbfs
        if playback <= _SILENCE_DBFS or frame_dbfs(frame) > playback + self.level_db:
            self.open_frames += 1
            return frame
        self.closed_frames += 1
        return np.zeros_like(frame)


def frame_dbfs(frame: Int16Array) -> float:
    if frame.size == 0:
        return _SILENCE_DBFS
    data = frame.astype(np.float64)
    rms = math.sqrt(float(np.mean(data * data))) / 32768.0
    return _SILENCE_DBFS if rms <= 0 else max(_SILENCE_DBFS, 20.0 * math.log10(rms))


@dataclass(frozen=True, slots=True)
class EchoStats:
    processed_ms: int  # uplink audio that went through the canceller
    gated_frames: int  # 10 ms frames the gate silenced
    reference_dropped: int  # reference blocks lost before the loop took them
    failures: int


class UplinkEcho:
    """The uplink's echo stage: canceller and/or gate, fed by a :class:`ReferenceTap`.

    :meth:`process` takes each captured 24 kHz block and returns a block of the same length with the echo
    removed (or the block itself when there is nothing to do). The canceller runs only while playback has
    been audible within :data:`HOLD_S`; while the kiosk is silent (listening for the wake word) this costs
    a scan of the reference for non-zero samples and nothing else. A canceller that fails is switched off
    (logged once, reported by :meth:`describe`) rather than letting an exception reach the capture path.
    """

    def __init__(
        self,
        tap: ReferenceTap,
        *,
        canceller: Canceller | None,
        gate: EchoGate | None = None,
        delay_ms: int = 40,
        mode: str = "builtin",
        note: str = "",
    ) -> None:
        self.tap = tap
        self.canceller = canceller
        self.gate = gate
        self.delay_ms = delay_ms
        self.mode = mode
        self.note = note
        self._resampler: Resampler | None = None
        self._render = np.zeros(0, dtype=np.int16)
        self._pending_in = np.zeros(0, dtype=np.int16)
        self._pending_out = np.zeros(0, dtype=np.int16)
        self._hold = int(HOLD_S * REALTIME_RATE)
        self._since_audible = self._hold  # samples of uplink since playback was last audible
        self.processed_samples = 0
        self.failures = 0

    # -- reporting ---------------------------------------------------------------------------------------

    def describe(self) -> str:
        """What is really active, for ``/status``: ``builtin (webrtc)``, ``system``, ``off``, ``off (...)``."""
        if self.canceller is not None:
            text = f"builtin ({self.canceller.name})"
        elif self.mode == "system":
            text = "system (the sound server's echo canceller)"
        else:
            text = "off"
        return f"{text} ({self.note})" if self.note else text

    def describe_gate(self) -> str:
        return "off" if self.gate is None else f"on (uplink must exceed playback {self.gate.level_db:+g} dB)"

    @property
    def stats(self) -> EchoStats:
        return EchoStats(self.processed_samples * 1000 // REALTIME_RATE,
                         0 if self.gate is None else self.gate.closed_frames, self.tap.dropped, self.failures)

    def counters(self) -> dict[str, int]:
        """For /status."""
        s = self.stats
        return {"echo_processed_ms": s.processed_ms, "echo_gated_frames": s.gated_frames,
                "echo_reference_dropped": s.reference_dropped}

    @property
    def needs_reference(self) -> bool:
        """Whether the speaker's output must be tapped (a canceller or a gate is at work)."""
        return self.canceller is not None or self.gate is not None

    @property
    def active(self) -> bool:
        """Playback was audible recently: the canceller and gate are working on the uplink."""
        return self._since_audible < self._hold

    # -- the loop side -----------------------------------------------------------------------------------

    def process(self, pcm24k: Int16Array) -> Int16Array:
        """One captured block (mono int16, 24 kHz) in; the same number of samples out, echo removed."""
        if not self.needs_reference:
            self.tap.drain()  # nothing listens (a canceller that failed): keep the tap from overflowing
            return pcm24k
        self._take_reference()
        self._pending_in = np.concatenate([self._pending_in, np.asarray(pcm24k, dtype=np.int16)])
        whole = len(self._pending_in) // FRAME * FRAME
        frames, self._pending_in = self._pending_in[:whole], self._pending_in[whole:]
        out = self._frames(frames) if whole else frames
        self._since_audible = min(self._since_audible + len(pcm24k), self._hold)
        available = np.concatenate([self._pending_out, out])
        if len(available) < len(pcm24k):  # a block that is not whole frames: start a sub-frame delay, once
            available = np.concatenate([np.zeros(len(pcm24k) - len(available), dtype=np.int16), available])
        result, self._pending_out = available[: len(pcm24k)], available[len(pcm24k):]
        return result

    def _take_reference(self) -> None:
        """Move what was played since the last block into the 24 kHz render queue (or forget silence)."""
        for pcm, rate in self.tap.drain():
            audible = bool(np.any(np.abs(pcm) > _AUDIBLE))
            if audible:
                self._since_audible = 0
            elif not self.active:
                if self._resampler is not None:
                    self._resampler.reset()
                continue
            if self._resampler is None or self._resampler.in_rate != rate:
                self._resampler = Resampler(rate, REALTIME_RATE)
            ref = to_int16(self._resampler.process(to_float(pcm)))
            self._render = np.concatenate([self._render, ref])

    def _frames(self, frames: Int16Array) -> Int16Array:
        """Whole 10 ms frames of uplink through the canceller and the gate."""
        whole = len(self._render) // FRAME * FRAME
        render, self._render = self._render[:whole], self._render[whole:]
        if not self.active:
            self._render = np.zeros(0, dtype=np.int16)
            if self.gate is not None:
                self.gate.note_silence(len(frames) // FRAME)
            return frames
        canceller = self.canceller
        try:
            for i in range(0, len(render), FRAME):
                ref = render[i : i + FRAME]
                if canceller is not None:
                    canceller.render(ref)
                if self.gate is not None:
                    self.gate.note_reference(ref)
            out = np.empty_like(frames)
            for i in range(0, len(frames), FRAME):
                frame = frames[i : i + FRAME]
                if canceller is not None:
                    frame = canceller.capture(frame, self.delay_ms)
                if self.gate is not None:
                    frame = self.gate.apply(frame)
                out[i : i + FRAME] = frame
        except Exception as exc:
            self._canceller_failed(exc)
            return frames
        if canceller is not None:
            self.processed_samples += len(frames)
        return out

    def _canceller_failed(self, exc: Exception) -> None:
        self.failures += 1
        name = self.canceller.name if self.canceller is not None else "gate"
        self.canceller = None
        self.note = f"{name} failed: {exc}"
        log_event(_log, "error", "echo cancellation stopped: %s failed: %s; the uplink now carries the echo",
                  name, exc, level=logging.ERROR, REASON="echo_canceller_failed")


def build_uplink_echo(cfg: AudioConfig, *, make_canceller: Callable[[], Canceller] | None = None) -> UplinkEcho:
    """The echo stage the configuration asks for; a canceller that cannot start is logged and left out.

    ``make_canceller`` replaces the WebRTC canceller (tests, benchmarks).
    """
    tap = ReferenceTap()
    gate = EchoGate(cfg.echo_gate_db, cfg.echo_delay_ms + GATE_WINDOW_EXTRA_MS) if cfg.echo_gate == "on" else None
    canceller: Canceller | None = None
    note = ""
    if cfg.echo_cancellation == "builtin":
        try:
            canceller = make_canceller() if make_canceller is not None else WebRtcCanceller()
        except CancellerUnavailable as exc:
            note = f"builtin unavailable: {exc}"
            log_event(_log, "error", "audio.echo_cancellation = \"builtin\", but %s; running without echo "
                      "cancellation (the assistant may interrupt itself)", exc, level=40,
                      REASON="echo_canceller_unavailable")
    echo = UplinkEcho(tap, canceller=canceller, gate=gate, delay_ms=cfg.echo_delay_ms, mode=cfg.echo_cancellation,
                      note=note)
    _log.info("echo cancellation: %s; echo gate: %s", echo.describe(), echo.describe_gate())
    return echo
