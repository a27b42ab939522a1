"""The rig's echo path: what kioskd plays comes back into its microphone, as on a real kiosk.

:class:`EchoRig` adds to an :class:`~tests.rig.AudioRig`, inside the same PulseAudio server:

* the direct echo: ``module-loopback`` from the speaker's monitor (``rig_speaker.monitor``) into the
  microphone's sink (``rig_mic_in``) with ``latency_msec`` = the echo delay; the loopback's sink-input volume
  sets the attenuation in dB (``pactl set-sink-input-volume IDX -- -6dB``). Both sinks run on the server's
  one clock, as a room's speaker and microphone share the air, so the loopback's rate adaptation is off
  (``adjust_time=0``): with it on, the loopback's resampler walked the delay 15-25 ms away from the set
  value within two minutes (measured by cross-correlating kioskd's reference with its microphone), which
  no room does;
* room colouring: a second, later and quieter loopback (a reflection off a wall a few metres away), which
  makes the echo path a comb filter rather than a pure delay;
* room noise: pink noise at a fixed level played into ``rig_mic_in`` by ``pacat`` (fed from a thread; the
  server paces it).

The test's "visitor" still speaks with :meth:`AudioRig.play` into ``rig_mic_in``; the server mixes the
visitor, the echo and the noise, and kioskd records the sum from ``rig_mic``. :meth:`scaled_speech` makes a
copy of a speech file at a level relative to a reference (the assistant's playback), so "a visitor 14 dB
quieter than the reply" is a number, not a guess.

Only additions: :mod:`tests.rig` is not changed.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.rig import MIC_SINK, RATE, SPEAKER, AudioRig, RigError

_NOISE_SECONDS = 8
_ACTIVE_DBFS = -50.0  # 10 ms frames above this count as speech when a level is measured


@dataclass(frozen=True)
class EchoPath:
    """How the speaker reaches the microphone."""

    delay_ms: int = 40
    gain_db: float = -6.0
    reflection_delay_ms: int = 11  # after the direct echo
    reflection_db: float = -9.0  # relative to the direct echo
    noise_dbfs: float = -65.0  # RMS of the room noise at the microphone; None-like: <= -120 turns it off

    def __post_init__(self) -> None:
        if not 1 <= self.delay_ms <= 2000:
            raise ValueError(f"echo delay {self.delay_ms} ms is out of range")
        if self.gain_db > 0:
            raise ValueError("an echo louder than the playback is not a room")


def active_dbfs(pcm: np.ndarray, rate: int) -> float:
    """RMS level (dBFS) of the 10 ms frames that carry sound: how loud speech is while it is being spoken."""
    data = np.asarray(pcm, dtype=np.float64)
    if data.dtype.kind == "i" or np.max(np.abs(data), initial=0.0) > 1.0:
        data = data / 32768.0
    n = rate // 100
    frames = data[: len(data) // n * n].reshape(-1, n)
    if not len(frames):
        return -120.0
    levels = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-20)
    loud = frames[levels > _ACTIVE_DBFS]
    if not len(loud):
        return -120.0
    return float(10 * np.log10(np.mean(loud * loud)))


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit WAV as mono float32 and its rate."""
    with wave.open(str(path)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1)
    return pcm, rate


def write_mono(path: Path, pcm: np.ndarray, rate: int) -> Path:
    data = np.clip(np.round(np.asarray(pcm, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.tobytes())
    return path


def scaled_speech(speech: Path, reference_dbfs: float, relative_db: float, directory: Path) -> Path:
    """A copy of ``speech`` whose active level is ``relative_db`` from ``reference_dbfs``."""
    pcm, rate = read_mono(speech)
    gain_db = reference_dbfs + relative_db - active_dbfs(pcm, rate)
    out = directory / f"{speech.stem}-{relative_db:+.0f}dB.wav"
    peak = float(np.max(np.abs(pcm))) * 10 ** (gain_db / 20)
    if peak >= 1.0:
        raise ValueError(f"{speech.name} at {relative_db:+g} dB would clip (peak {peak:.2f})")
    return write_mono(out, pcm * 10 ** (gain_db / 20), rate)


def pink_noise(seconds: float, rate: int, dbfs: float, seed: int = 7) -> np.ndarray:
    """Pink (1/f) noise at an RMS of ``dbfs``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return np.asarray(noise / np.sqrt(np.mean(noise * noise)) * 10 ** (dbfs / 20), dtype=np.float32)


class EchoRig:
    """The echo path of one :class:`AudioRig`; :meth:`connect` it, :meth:`disconnect` when done."""

    def __init__(self, rig: AudioRig) -> None:
        self.rig = rig
        self.path: EchoPath | None = None
        self._modules: list[str] = []
        self._noise: subprocess.Popen[bytes] | None = None
        self._noise_thread: threading.Thread | None = None

    def connect(self, path: EchoPath) -> None:
        """Speaker → microphone with ``path``'s delay, gain, reflection and noise."""
        if self._modules:
            self.disconnect()
        self.path = path
        self._loopback(path.delay_ms, path.gain_db)
        if path.reflection_db > -60:
            self._loopback(path.delay_ms + path.reflection_delay_ms, path.gain_db + path.reflection_db)
        if path.noise_dbfs > -120:
            self._start_noise(path.noise_dbfs)

    def disconnect(self) -> None:
        modules, self._modules = self._modules, []
        for module in modules:
            with contextlib.suppress(RigError):
                self.rig.pactl("unload-module", module)
        noise, self._noise = self._noise, None
        if noise is not None:
            noise.terminate()
            try:
                noise.wait(5)
            except subprocess.TimeoutExpired:
                noise.kill()
                noise.wait(5)
        if self._noise_thread is not None:
            self._noise_thread.join(5)
            self._noise_thread = None
        self.path = None

    def _loopback(self, latency_ms: int, gain_db: float) -> None:
        module = self.rig.pactl(
            "load-module", "module-loopback", f"source={SPEAKER}.monitor", f"sink={MIC_SINK}",
            f"latency_msec={latency_ms}", "adjust_time=0", "source_dont_move=true", "sink_dont_move=true",
            "sink_input_properties=media.name=rig-echo", "source_output_properties=media.name=rig-echo",
        ).strip()
        self._modules.append(module)
        index = self._sink_input_of(module)
        self.rig.pactl("set-sink-input-volume", index, f"{gain_db:.1f}dB")

    def _sink_input_of(self, module: str) -> str:
        listing = self.rig.pactl("list", "sink-inputs")
        for block in listing.split("Sink Input #")[1:]:
            if f"Owner Module: {module}\n" in block:
                return block.split("\n", 1)[0].strip()
        raise RigError(f"module-loopback {module} has no sink input")

    def _start_noise(self, dbfs: float) -> None:
        noise = pink_noise(_NOISE_SECONDS, RATE, dbfs)
        raw = np.clip(np.round(noise * 32768), -32768, 32767).astype("<i2").tobytes()
        proc = subprocess.Popen(
            ["pacat", "--raw", "-d", MIC_SINK, f"--rate={RATE}", "--channels=1", "--format=s16le",
             "--latency-msec=100", "--stream-name=rig-room-noise"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.rig.env,
        )
        self._noise = proc

        def feed() -> None:  # blocks while pacat's buffer is full: the server paces it
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ValueError, OSError):
                while proc.poll() is None:
                    proc.stdin.write(raw)
                    proc.stdin.flush()

        self._noise_thread = threading.Thread(target=feed, name="rig-room-noise", daemon=True)
        self._noise_thread.start()
