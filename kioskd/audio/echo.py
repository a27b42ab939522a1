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

    The canceller must see the echo at a fixed delay behind the reference: each jump of that delay makes
    AEC3 search for it again, and while it does it lets echo through, 10-20 dB down, for 40-300 ms, mostly
    at the start of the next replies. So it gets one reference frame per microphone frame, sample for
    sample (:meth:`UplinkEcho._frames`); the devices' clocks place the reference and move it only when a
    device lost time. A jump of the real echo path (a device that dropped a few milliseconds of audio)
    still costs a second or two of such leaks. The *onset guard*
    (``audio.echo_onset_guard_ms``, 1250 ms by default) covers them: for that long after playback resumes
    following :data:`ONSET_GAP_S` of quiet, the uplink passes only frames louder than the playback +
    ``echo_gate_db`` (the echo gate's rule, below). A visitor who starts speaking in that time and is
    quieter than the assistant is heard from its end on, not from their first syllable (they can still
    interrupt, up to 1.25 s later); after it, nothing is gated.

``system``
    kioskd does nothing itself: the sound server cancels the echo. The operator routes kioskd through
    PulseAudio's (or PipeWire's) echo canceller, e.g. for PulseAudio::

        load-module module-echo-cancel aec_method=webrtc source_master=<mic> sink_master=<speaker> \\
            source_name=kiosk_ec_mic sink_name=kiosk_ec_speaker use_volume_sharing=false
        set-default-source kiosk_ec_mic
        set-default-sink kiosk_ec_speaker

    and sets ``audio.input_device``/``audio.output_device`` to ``pulse`` (or ``PULSE_SOURCE``/``PULSE_SINK``
    in the unit's environment) so that both streams go through the canceller's source and sink. PipeWire's
    equivalent is ``libpipewire-module-echo-cancel``. The Ansible role does not set this up (yet): ``system`` is
    for images whose sound server is already configured that way.
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
import time
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
REFERENCE_LAG_S = 0.05
"""The canceller gets the reference that was played this long before the microphone block it cleans.

The echo of a block reaches the loop later than the block itself (output latency + the room + input
latency, 60-200 ms on the devices measured), so the canceller still sees every sound before its echo, and
the reference has time to arrive from the output thread and through its resampler.
"""
RESYNC_S = 0.04
"""How far the reference may drift from where the clocks put it before it is moved there again.

Between moves the canceller gets the reference sample for sample (:meth:`UplinkEcho._frames`): slow drift
between two sound cards is left to the canceller, which follows a few milliseconds by itself. Less than
:data:`REFERENCE_LAG_S`, so that however the drift goes, each reference frame still ends before the
microphone frame it is paired with.
"""
ONSET_GAP_S = 0.25
"""Playback that becomes audible after at least this long without arms the onset guard (a reply's start, a new
sentence; not the pause at a comma)."""
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
    :meth:`hook_for`): it copies the block, notes the monotonic time and appends both to a bounded deque.
    If the loop stops draining (a stalled microphone), the oldest blocks fall out and are counted in
    :attr:`dropped`. The times put the reference on the output device's timeline (:class:`StreamClock`).
    """

    def __init__(self, max_blocks: int = _TAP_BLOCKS, clock: Callable[[], float] = time.monotonic) -> None:
        self._blocks: collections.deque[tuple[Int16Array, int, float]] = collections.deque(maxlen=max_blocks)
        self._clock = clock
        self.dropped = 0
        self.pushed = 0

    def push(self, pcm: Int16Array, rate: int) -> None:
        """Output thread: one block (mono int16 at ``rate``) that was just handed to the device."""
        blocks = self._blocks
        if len(blocks) == blocks.maxlen:
            self.dropped += 1
        blocks.append((np.array(pcm, dtype=np.int16), rate, self._clock()))
        self.pushed += 1

    def hook_for(self, rate_of: Callable[[], int]) -> Callable[[Int16Array], None]:
        """An ``on_output`` hook that tags each block with the device's current rate."""
        def hook(pcm: Int16Array) -> None:
            self.push(pcm, rate_of())

        return hook

    def drain(self) -> list[tuple[Int16Array, int, float]]:
        """Loop: every block pushed since the last drain, oldest first, as (pcm, rate, time pushed)."""
        out = []
        blocks = self._blocks
        while blocks:
            try:
                out.append(blocks.popleft())
            except IndexError:
                break
        return out


class StreamClock:
    """When each sample of a stream was (at the earliest) handed over, on the monotonic clock.

    A device hands over samples at its rate, late by scheduling jitter and never early, so
    ``time - samples_so_far / rate`` has a floor: the stream's *baseline*, and a sample's time is the
    baseline plus its index over the rate. The baseline moves up when the device loses time: an output
    device whose buffer ran dry played silence and asks for every later block that much later; an input
    device that overflowed dropped samples. That shows as every observation for a while being late by at
    least the same amount; once that has lasted ``confirm_s`` the baseline moves up from the first of those
    samples on (:meth:`time_of` is piecewise), so a late callback that the device's buffer bridged (it is
    followed by back-to-back ones) is never taken for lost time, and samples already timed are re-timed.
    """

    def __init__(self, rate: int, *, tolerance_s: float = 0.015, confirm_s: float = 0.2) -> None:
        self.rate = rate
        self.tolerance_s = tolerance_s
        self.confirm_s = confirm_s
        self.samples = 0
        self.baseline: float | None = None
        self._late_since: int | None = None  # first sample of the current run of late observations
        self._late_min = 0.0
        self._steps: collections.deque[tuple[int, float]] = collections.deque(maxlen=32)  # (from sample, +s)
        self.shifts = 0
        self.shifted_s = 0.0

    def note(self, samples: int, at: float) -> None:
        """``samples`` more were handed over, the last of them at ``at``."""
        first = self.samples
        self.samples += samples
        c = at - self.samples / self.rate - self._offset(first)
        if self.baseline is None or c < self.baseline:
            self.baseline = c
            self._late_since = None
            return
        late = c - self.baseline
        if late <= self.tolerance_s:
            self._late_since = None
            return
        if self._late_since is None:
            self._late_since, self._late_min = first, late
        self._late_min = min(self._late_min, late)
        if (self.samples - self._late_since) / self.rate >= self.confirm_s:
            self._steps.append((self._late_since, self._late_min))
            self.shifts += 1
            self.shifted_s += self._late_min
            self._late_since = None

    def _offset(self, index: float) -> float:
        return sum(step for start, step in self._steps if start <= index)

    def time_of(self, index: float) -> float:
        """When sample ``index`` (counted from the start) was handed over."""
        assert self.baseline is not None
        return self.baseline + index / self.rate + self._offset(index)

    def index_at(self, at: float) -> float:
        """Which sample was handed over at ``at`` (recent times: the lost time found so far is all before it)."""
        assert self.baseline is not None
        return (at - self.baseline - self._offset(self.samples)) * self.rate


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
        onset_guard: EchoGate | None = None,
        onset_guard_ms: int = 0,
        delay_ms: int = 40,
        mode: str = "builtin",
        note: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tap = tap
        self.canceller = canceller
        self.gate = gate
        self.onset_guard = onset_guard
        self._onset_samples = int(onset_guard_ms * REALTIME_RATE / 1000)
        self._onset_gap = int(ONSET_GAP_S * REALTIME_RATE)
        self._onset_left = 0  # uplink samples still to pass the onset guard
        self.delay_ms = delay_ms
        self.mode = mode
        self.note = note
        self._resampler: Resampler | None = None
        self._clock = clock
        self.playout: StreamClock | None = None  # the reference's timeline (at the output device's rate)
        self.capture_clock = StreamClock(REALTIME_RATE, confirm_s=1.0)
        self._segments: collections.deque[tuple[int, Int16Array]] = collections.deque()  # (24 kHz index, pcm)
        self._ref_index = 0  # reference samples (24 kHz) taken so far: the index of the next one
        self._cursor: int | None = None  # 24 kHz index of the next reference frame for the canceller
        self._shifts_seen = (0, 0)  # lost time the two clocks had found when the reference was last placed
        self.reference_gaps = 0
        self.resyncs = 0  # times the reference was moved against the microphone (starts included)
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
        gated = sum(g.closed_frames for g in (self.gate, self.onset_guard) if g is not None)
        return EchoStats(self.processed_samples * 1000 // REALTIME_RATE, gated, self.tap.dropped, self.failures)

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
        if len(pcm24k):
            self.capture_clock.note(len(pcm24k), self._clock())
        self._take_reference()
        start = self.capture_clock.samples - len(pcm24k) - len(self._pending_in)
        self._pending_in = np.concatenate([self._pending_in, np.asarray(pcm24k, dtype=np.int16)])
        whole = len(self._pending_in) // FRAME * FRAME
        frames, self._pending_in = self._pending_in[:whole], self._pending_in[whole:]
        out = self._frames(frames, start) if whole else frames
        self._since_audible = min(self._since_audible + len(pcm24k), self._hold)
        available = np.concatenate([self._pending_out, out])
        if len(available) < len(pcm24k):  # a block that is not whole frames: start a sub-frame delay, once
            available = np.concatenate([np.zeros(len(pcm24k) - len(available), dtype=np.int16), available])
        result, self._pending_out = available[: len(pcm24k)], available[len(pcm24k):]
        return result

    def _take_reference(self) -> None:
        """Move what was played into time-stamped 24 kHz segments (while nothing is audible: only its times)."""
        for pcm, rate, pushed_at in self.tap.drain():
            if self.playout is None or self.playout.rate != rate:
                self.playout = StreamClock(rate)
                self._resampler = Resampler(rate, REALTIME_RATE)
                self._ref_index = 0
                self._segments.clear()
                self._cursor = None
            self.playout.note(len(pcm), pushed_at)
            if np.any(np.abs(pcm) > _AUDIBLE):
                if self._since_audible >= self._onset_gap:  # sound after a pause: the canceller re-locks
                    self._onset_left = self._onset_samples
                self._since_audible = 0
            elif not self.active:
                assert self._resampler is not None
                self._resampler.reset()
                self._ref_index = round(self.playout.samples * REALTIME_RATE / rate)
                continue
            assert self._resampler is not None
            ref = to_int16(self._resampler.process(to_float(pcm)))
            # The resampler hands out whole chunks now and then: time its output by its own sample count.
            if len(ref):
                self._segments.append((self._ref_index, ref))
                self._ref_index += len(ref)

    def _reference_time(self, index: int) -> float:
        """When the reference's 24 kHz sample ``index`` was handed to the output device."""
        playout = self.playout
        assert playout is not None
        return playout.time_of(index * playout.rate / REALTIME_RATE)

    def _reference_frame(self, first: int) -> Int16Array:
        """The reference's 24 kHz samples ``first`` to ``first + FRAME`` (zeros where nothing was played)."""
        frame = np.zeros(FRAME, dtype=np.int16)
        end = first + FRAME
        segments = self._segments
        while segments and segments[0][0] + len(segments[0][1]) <= first:
            segments.popleft()
        covered = 0
        for start, pcm in segments:
            if start >= end:
                break
            lo, hi = max(first, start), min(end, start + len(pcm))
            if hi > lo:
                frame[lo - first : hi - first] = pcm[lo - start : hi - start]
                covered += hi - lo
        if covered < FRAME // 2:
            self.reference_gaps += 1
        return frame

    def _frames(self, frames: Int16Array, first_index: float) -> Int16Array:
        """Whole 10 ms frames of uplink (``first_index`` on the capture timeline) through canceller and gate.

        Before each microphone frame the canceller gets one reference frame: the 10 ms of reference that
        follow the previous one, sample for sample. Where the reference starts is set by the clocks: the
        frame that ends :data:`REFERENCE_LAG_S` before the microphone frame; it is set again only when a
        device lost time or the two clocks drifted more than :data:`RESYNC_S` apart. The canceller sees the
        steady interleaving and the fixed echo delay it is built for, whatever the chunks the devices and
        the resamplers deliver in and however their callbacks' times wobble.
        """
        if not self.active or self.playout is None or self.playout.baseline is None:
            self._segments.clear()
            self._cursor = None
            if self.gate is not None:
                self.gate.note_silence(len(frames) // FRAME)
            return frames
        canceller = self.canceller
        playout = self.playout
        out = np.empty_like(frames)
        try:
            for i in range(0, len(frames), FRAME):
                due = self.capture_clock.time_of(first_index + i + FRAME) - REFERENCE_LAG_S
                shifts = (playout.shifts, self.capture_clock.shifts)
                if (self._cursor is None or shifts != self._shifts_seen
                        or abs(self._reference_time(self._cursor + FRAME) - due) > RESYNC_S):
                    # (Re)start: the canceller's own delay search covers the jump.
                    end = round(playout.index_at(due) * REALTIME_RATE / playout.rate)
                    self._cursor, self._shifts_seen = end - FRAME, shifts
                    self.resyncs += 1
                ref = self._reference_frame(self._cursor)
                self._cursor += FRAME
                if canceller is not None:
                    canceller.render(ref)
                if self.gate is not None:
                    self.gate.note_reference(ref)
                if self.onset_guard is not None:
                    self.onset_guard.note_reference(ref)
                frame = frames[i : i + FRAME]
                if canceller is not None:
                    frame = canceller.capture(frame, self.delay_ms)
                if self.gate is not None:
                    frame = self.gate.apply(frame)
                if self._onset_left > 0 and self.onset_guard is not None:
                    frame = self.onset_guard.apply(frame)
                    self._onset_left -= FRAME
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
    window_ms = cfg.echo_delay_ms + GATE_WINDOW_EXTRA_MS
    gate = EchoGate(cfg.echo_gate_db, window_ms) if cfg.echo_gate == "on" else None
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
    # While the canceller re-locks onto playback that resumes after a pause, the gate's rule covers for it.
    onset = EchoGate(cfg.echo_gate_db, window_ms) if canceller is not None and cfg.echo_onset_guard_ms else None
    echo = UplinkEcho(tap, canceller=canceller, gate=gate, onset_guard=onset, onset_guard_ms=cfg.echo_onset_guard_ms,
                      delay_ms=cfg.echo_delay_ms, mode=cfg.echo_cancellation, note=note)
    _log.info("echo cancellation: %s; echo gate: %s", echo.describe(), echo.describe_gate())
    return echo
