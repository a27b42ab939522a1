"""Energy-based voice activity detection for the simulator's ``server_vad``.

The real service runs a trained model; the simulator only needs something that behaves the same way at the
protocol level: a start a little after speech begins, reported with ``prefix_padding_ms`` of lead-in, and a stop
once ``silence_duration_ms`` of quiet has passed. A frame energy test does that on clean speech, which is what the
tests and the demo feed it.

How ``threshold`` (0.0–1.0, the session's ``turn_detection.threshold``) maps to a level: a 10 ms frame counts as
speech when its RMS level is above ``-70 + 50 * threshold`` dBFS, so 0.0 → -70 dBFS (almost any sound),
0.5 (the default) → -45 dBFS, 0.8 → -30 dBFS, 1.0 → -20 dBFS (only loud, close speech). Speech starts after
``min_speech_ms`` of consecutive speech frames, so a click does not open a turn.

All positions are milliseconds of audio appended to the session so far (the service's ``audio_start_ms`` /
``audio_end_ms``), never wall-clock time: the detector is a pure function of the samples fed to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 24_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes per millisecond
FRAME_MS = 10
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
_FLOOR_DBFS = -70.0
_SPAN_DB = 50.0
_FULL_SCALE = 32768.0


def threshold_to_dbfs(threshold: float) -> float:
    """The frame level (dBFS) above which a frame counts as speech for this ``turn_detection.threshold``."""
    clamped = min(max(threshold, 0.0), 1.0)
    return _FLOOR_DBFS + _SPAN_DB * clamped


def frame_levels_dbfs(pcm: bytes) -> np.ndarray:
    """RMS level of each whole 10 ms frame of PCM16/24 kHz audio, in dBFS (silence reads -120)."""
    usable = len(pcm) - len(pcm) % FRAME_BYTES
    if usable <= 0:
        return np.zeros(0)
    samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64).reshape(-1, FRAME_BYTES // 2)
    rms = np.sqrt(np.mean(samples * samples, axis=1))
    return np.asarray(20.0 * np.log10(np.maximum(rms, 1e-6 * _FULL_SCALE) / _FULL_SCALE))


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began; ``audio_start_ms`` already includes the prefix padding (as the service reports it)."""

    audio_start_ms: int
    onset_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    """``silence_duration_ms`` of quiet followed speech; ``audio_end_ms`` is where that silence ended."""

    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


class EnergyVad:
    """Feed PCM16/24 kHz mono bytes in any chunk size; get start/stop events in audio time."""

    def __init__(
        self,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 200,
        *,
        min_speech_ms: int = 30,
    ) -> None:
        self.min_speech_ms = max(FRAME_MS, min_speech_ms)
        self.configure(threshold, prefix_padding_ms, silence_duration_ms)
        self._pending = b""
        self._position_ms = 0
        self._floor_ms = 0
        self._in_speech = False
        self._voiced_run_ms = 0
        self._silent_run_ms = 0

    def configure(self, threshold: float, prefix_padding_ms: int, silence_duration_ms: int) -> None:
        """Apply new session settings without losing the position in the audio or a turn in progress."""
        self.threshold = threshold
        self.prefix_padding_ms = max(0, prefix_padding_ms)
        self.silence_duration_ms = max(FRAME_MS, silence_duration_ms)
        self.level_dbfs = threshold_to_dbfs(threshold)

    @property
    def position_ms(self) -> int:
        """Milliseconds of audio examined so far (whole frames only)."""
        return self._position_ms

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def reset(self) -> None:
        """Forget any speech in progress (after a commit or clear); no later start reaches back before now."""
        self._floor_ms = self._position_ms
        self._in_speech = False
        self._voiced_run_ms = 0
        self._silent_run_ms = 0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        data = self._pending + pcm
        usable = len(data) - len(data) % FRAME_BYTES
        self._pending = data[usable:]
        events: list[VadEvent] = []
        for level in frame_levels_dbfs(data[:usable]):
            self._position_ms += FRAME_MS
            event = self._step(bool(level > self.level_dbfs))
            if event is not None:
                events.append(event)
        return events

    def _step(self, voiced: bool) -> VadEvent | None:
        if not self._in_speech:
            self._voiced_run_ms = self._voiced_run_ms + FRAME_MS if voiced else 0
            if self._voiced_run_ms < self.min_speech_ms:
                return None
            onset = self._position_ms - self._voiced_run_ms
            self._in_speech = True
            self._silent_run_ms = 0
            start = max(self._floor_ms, onset - self.prefix_padding_ms, 0)
            return SpeechStarted(audio_start_ms=start, onset_ms=onset)
        self._silent_run_ms = 0 if voiced else self._silent_run_ms + FRAME_MS
        if self._silent_run_ms < self.silence_duration_ms:
            return None
        self._in_speech = False
        self._voiced_run_ms = 0
        self._silent_run_ms = 0
        end = self._position_ms
        self._floor_ms = end
        return SpeechStopped(audio_end_ms=end)
