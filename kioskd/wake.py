"""Wake-word detection with openWakeWord, off the event loop, and ``kioskd wake-test``.

The detector takes the microphone's 16 kHz blocks (:meth:`WakeDetector.feed`), runs openWakeWord in one
worker thread, and delivers :class:`WakeEvent` on the event loop. The pieces a kiosk needs around the bare
model are here:

* models by name (the pre-trained ``hey_jarvis``, ``alexa``, ``hey_mycroft``, ``hey_rhasspy`` shipped
  inside the openwakeword 0.5.1 wheel, so nothing is downloaded) or by ``.onnx`` path, several at once;
* a refractory period per model, measured on the audio timeline: one utterance wakes once, and the model
  keeps being fed meanwhile so its state stays current;
* openWakeWord's Silero VAD gate (``wake.vad_threshold``) against TV and noise;
* a silence gate (``wake.silence_gate_dbfs``): quiet frames are held back instead of inferred, and the last
  two seconds of them are replayed into the model when sound returns, so a wake word that starts after a
  long silence sees exactly the context it would have seen without the gate;
* where the wake word *ended*: openWakeWord's score crosses the threshold 80–480 ms after the end of the
  phrase, so the detector looks back at the audio for the pause that follows it (see
  :func:`find_word_end`). The daemon starts the pre-roll there, so the question said in the same breath
  reaches the model whole and the wake word itself does not.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib
import importlib.util
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from kioskd.audio.dsp import WAKE_RATE, CaptureConverter, Int16Array, dbfs, to_int16
from kioskd.config import AudioConfig, WakeConfig
from kioskd.logs import get_logger

_log = get_logger("wake")

FRAME = 1280  # openWakeWord's native step: 80 ms at 16 kHz
# How far back openWakeWord's features reach: 1.28 s of embeddings over 0.76 s mel windows, rounded up.
CONTEXT_FRAMES = 25
# After the last loud frame, keep inferring this long: the score peaks up to ~0.6 s after the phrase ends.
HANGOVER_FRAMES = 25
# find_word_end: a pause is this many 10 ms hops below the speech threshold; searched this far back.
_HOP = 160
_PAUSE_HOPS = 6
_PAUSE_HOPS_AT_EDGE = 3
_SEARCH_BACK = int(0.56 * WAKE_RATE)
_TYPICAL_LAG = int(0.24 * WAKE_RATE)
_ANALYSIS = WAKE_RATE  # one second of audio before the detection
# Also shipped in the wheel, but intent detectors ("set a timer", "what's the weather"), not wake words.
_NOT_WAKE_WORDS = frozenset({"timer", "weather"})
EX_WAKE_NONE = 1
EX_WAKE_INPUT = 2


class WakeModelError(Exception):
    """A wake model that cannot be used; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class WakeEvent:
    """A detection: ``end16k`` is where the wake word ended on the capture's 16 kHz timeline."""

    model: str
    score: float
    end16k: int
    time: float


@dataclass(frozen=True, slots=True)
class WakeStats:
    frames: int
    inferences: int
    skipped: int
    drops: int
    detections: int
    loaded: bool


def builtin_models() -> dict[str, Path]:
    """Pre-trained wake words shipped in the openwakeword wheel, by name, as their ONNX files.

    Found from the package's files rather than by importing it (which pulls in scikit-learn and takes a
    second or two), so that a command that only checks its arguments stays quick.
    """
    spec = importlib.util.find_spec("openwakeword")
    if spec is None or not spec.submodule_search_locations:
        return {}
    found: dict[str, Path] = {}
    for location in spec.submodule_search_locations:
        for path in sorted((Path(location) / "resources" / "models").glob("*_v*.onnx")):
            name = path.name.rsplit("_v", 1)[0]
            if name not in _NOT_WAKE_WORDS:
                found[name] = path
    return found


def resolve_models(names: Sequence[str]) -> list[tuple[str, Path]]:
    """(display name, ONNX file) for each configured model, or :class:`WakeModelError`."""
    builtin = builtin_models()
    resolved: list[tuple[str, Path]] = []
    for spec in names:
        key = spec.strip()
        if key in builtin:
            resolved.append((key, builtin[key]))
            continue
        path = Path(key).expanduser()
        looks_like_path = "/" in key or key.endswith((".onnx", ".tflite"))
        if not looks_like_path:
            raise WakeModelError(
                f"unknown wake model {spec!r}: built-in models are {', '.join(sorted(builtin))}, "
                "or give the path of an .onnx file"
            )
        if path.suffix != ".onnx":
            raise WakeModelError(f"wake model {spec!r}: only .onnx models are supported (onnxruntime)")
        if not path.is_file():
            raise WakeModelError(f"wake model {spec!r}: no such file")
        resolved.append((path.stem, path))
    seen: set[str] = set()
    for display, _ in resolved:
        if display in seen:
            raise WakeModelError(f"wake model {display!r} is configured twice")
        seen.add(display)
    return resolved


def find_word_end(audio: Int16Array) -> int:
    """Where the wake word ended, as an offset into ``audio`` (which ends where it was detected).

    The phrase is followed by a pause before the detector fires (or before the next word, when the visitor
    goes on talking): the first run of quiet 10 ms hops within the last 0.56 s that follows speech. "Quiet"
    is relative to this audio: 35 dB under its loudest hop, or 6 dB over its noise floor if that is higher.
    When no pause is found, the typical detection lag is assumed.
    """
    n = len(audio) // _HOP
    if n < _PAUSE_HOPS_AT_EDGE + 2:
        return max(0, len(audio) - _TYPICAL_LAG)
    start = len(audio) - n * _HOP
    hops = audio[start:].astype(np.float64).reshape(n, _HOP) / 32768.0
    level = 10.0 * np.log10(np.mean(hops * hops, axis=1) + 1e-12)
    threshold = max(float(level.max()) - 35.0, float(np.percentile(level, 10)) + 6.0)
    speech = level > threshold
    first = max(1, n - _SEARCH_BACK // _HOP)
    i = first
    while i < n:
        if speech[i] or not speech[i - 1]:
            i += 1
            continue
        run = i
        while run < n and not speech[run]:
            run += 1
        if run - i >= _PAUSE_HOPS or (run == n and run - i >= _PAUSE_HOPS_AT_EDGE):
            return start + i * _HOP
        i = run
    return max(0, len(audio) - _TYPICAL_LAG)


def _reset_features(model: Any, seed: int = 0) -> None:
    """Forget every trace of earlier audio in an openWakeWord 0.5.1 ``Model``.

    ``Model.reset()`` clears only the score history; the feature extractor still holds seconds of old audio
    (a wake word from before the reset would fire again). This restores the extractor's buffers to their
    state after construction (see ``openwakeword.utils.AudioFeatures.__init__``), with seeded noise so runs
    are repeatable, and with a raw-audio buffer of one second instead of ten (:data:`_RAW_KEPT`).
    """
    model.reset()
    pre = model.preprocessor
    pre.raw_data_buffer = collections.deque(maxlen=_RAW_KEPT)
    pre.melspectrogram_buffer = np.ones((76, 32))
    pre.accumulated_samples = 0
    pre.raw_data_remainder = np.empty(0)
    noise = np.random.default_rng(seed).integers(-1000, 1000, WAKE_RATE * 4).astype(np.int16)
    pre.feature_buffer = _embeddings_in_small_batches(pre, noise)
    if getattr(model, "vad_threshold", 0) > 0:
        model.vad.reset_states()
        model.vad.prediction_buffer.clear()


# openWakeWord keeps the last 10 s of raw audio as a deque of Python ints (~6 MB once full) and copies all of
# it into a list every frame, though each mel step reads only the newest frame plus 480 samples. One second
# covers that for every frame size up to 15 520 samples; kioskd always hands it 1280.
_RAW_KEPT = WAKE_RATE

# openWakeWord fills its feature buffer from 4 s of noise, run through the embedding model as one batch of 41
# mel windows: ~40 MB of intermediate tensors at once, held afterwards by the C allocator as free heap. A few
# windows per call give the same embeddings at a fraction of the peak.
_EMBEDDING_BATCH = 4


def _embeddings_in_small_batches(pre: Any, x: Int16Array, window_size: int = 76, step_size: int = 8,
                                 **kwargs: Any) -> Any:
    """``openwakeword.utils.AudioFeatures._get_embeddings`` (0.5.1) with the windows run a few at a time."""
    spec = pre._get_melspectrogram(x, **kwargs)
    windows = [spec[i : i + window_size] for i in range(0, spec.shape[0], step_size)]
    batch = np.expand_dims(np.array([w for w in windows if w.shape[0] == window_size]), axis=-1).astype(np.float32)
    parts = [np.asarray(pre.embedding_model_predict(batch[i : i + _EMBEDDING_BATCH]))
             for i in range(0, len(batch), _EMBEDDING_BATCH)]
    return np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts])


_VERIFIER_TRAINER = "openwakeword.custom_verifier_model"


def _openwakeword_model_class() -> Any:
    """openwakeword's ``Model``, imported without what detection never uses.

    The package's ``__init__`` imports its custom-verifier *trainer*, which pulls in scikit-learn and SciPy:
    about 95 MB resident on a device that only detects (``bench/memory.py`` measures it). The trainer's
    module is replaced, before the package is first imported, by one whose ``train_custom_verifier``
    imports the real trainer when it is called; verifier models given to ``Model`` are unpickled as before.
    """
    if "openwakeword" not in sys.modules and _VERIFIER_TRAINER not in sys.modules:
        stand_in = types.ModuleType(_VERIFIER_TRAINER)

        def train_custom_verifier(*args: Any, **kwargs: Any) -> Any:
            del sys.modules[_VERIFIER_TRAINER]
            return importlib.import_module(_VERIFIER_TRAINER).train_custom_verifier(*args, **kwargs)

        stand_in.train_custom_verifier = train_custom_verifier  # type: ignore[attr-defined]
        sys.modules[_VERIFIER_TRAINER] = stand_in
    from openwakeword.model import Model

    return Model


@contextlib.contextmanager
def _lean_model_build() -> Iterator[None]:
    """While openwakeword builds its model, (1) turn off onnxruntime's CPU memory arena and pattern planning
    (it makes its sessions' ``SessionOptions`` itself): for these small models the arena holds memory that
    inference does not need, at no measurable CPU cost (``bench/listening_cpu.py``; ``bench/memory.py``
    measures what this context saves);
    (2) fill its feature buffer a few mel windows at a time (:func:`_embeddings_in_small_batches`)."""
    import onnxruntime

    class Options(onnxruntime.SessionOptions):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.enable_cpu_mem_arena = False
            self.enable_mem_pattern = False

    from openwakeword.utils import AudioFeatures

    with (_ORT_PATCH_LOCK, mock.patch.object(onnxruntime, "SessionOptions", Options),
          mock.patch.object(AudioFeatures, "_get_embeddings", _embeddings_in_small_batches)):
        yield


_ORT_PATCH_LOCK = threading.Lock()


class WakeEngine:
    """The synchronous detector: frames in, events out. Used by the worker thread (and by tests directly)."""

    def __init__(self, cfg: WakeConfig) -> None:
        model_class = _openwakeword_model_class()

        self.cfg = cfg
        models = resolve_models(cfg.models)
        try:
            with _lean_model_build():
                self.model = model_class(
                    wakeword_models=[str(path) for _, path in models],
                    inference_framework="onnx",
                    vad_threshold=cfg.vad_threshold,
                    ncpu=1,
                )
        except Exception as exc:
            names = ", ".join(str(p) for _, p in models)
            raise WakeModelError(f"cannot load wake model(s) {names}: {exc}") from None
        self.names = {path.stem: display for display, path in models}
        _reset_features(self.model)
        self._refractory = int(cfg.refractory_s * WAKE_RATE)
        self._gate = cfg.silence_gate_dbfs
        self._pending = np.zeros(0, dtype=np.int16)
        self._history: collections.deque[tuple[int, Int16Array]] = collections.deque(maxlen=_ANALYSIS // FRAME + 2)
        self._held: collections.deque[tuple[int, Int16Array]] = collections.deque(maxlen=CONTEXT_FRAMES)
        self._loud_until = -1
        self._last_wake: dict[str, int] = {}
        self.frames = 0
        self.inferences = 0
        self.skipped = 0
        self.detections = 0

    def reset(self) -> None:
        """Start afresh: no old audio in the model, no refractory, nothing held back."""
        _reset_features(self.model)
        self._pending = np.zeros(0, dtype=np.int16)
        self._history.clear()
        self._held.clear()
        self._loud_until = -1
        self._last_wake.clear()

    def process(self, pcm16k: Int16Array, end16k: int) -> list[WakeEvent]:
        """Feed a block that ends at ``end16k``; return the wake words it completed."""
        # Samples left over from the previous block are taken to run straight into this one; after a gap in
        # the timeline (dropped blocks, a reopened device) that is off by the gap for one frame at most.
        buf = np.concatenate([self._pending, pcm16k]) if len(self._pending) else pcm16k
        events: list[WakeEvent] = []
        usable = len(buf) - len(buf) % FRAME
        for offset in range(0, usable, FRAME):
            frame = np.ascontiguousarray(buf[offset : offset + FRAME], dtype=np.int16)
            events.extend(self._frame(frame, end16k - len(buf) + offset + FRAME))
        self._pending = np.array(buf[usable:], dtype=np.int16)
        return events

    def _frame(self, frame: Int16Array, end: int) -> list[WakeEvent]:
        self.frames += 1
        self._history.append((end, frame))
        if self._gate is not None:
            if dbfs(frame) >= self._gate:
                self._loud_until = end + HANGOVER_FRAMES * FRAME
                events: list[WakeEvent] = []
                while self._held:
                    held_end, held = self._held.popleft()
                    self.skipped -= 1
                    events.extend(self._infer(held, held_end))
                events.extend(self._infer(frame, end))
                return events
            if end > self._loud_until:
                self._held.append((end, frame))  # the oldest held frame falls out: skipped for good
                self.skipped += 1
                return []
        return self._infer(frame, end)

    def _infer(self, frame: Int16Array, end: int) -> list[WakeEvent]:
        self.inferences += 1
        scores = self.model.predict(frame)
        events = []
        for key, raw in scores.items():
            score = float(raw)
            if score < self.cfg.threshold:
                continue
            name = self.names.get(key, key)
            last = self._last_wake.get(name)
            if last is not None and end - last < self._refractory:
                continue
            self._last_wake[name] = end
            self.detections += 1
            events.append(WakeEvent(name, score, self._word_end(end), time.monotonic()))
        return events

    def _word_end(self, detected_at: int) -> int:
        frames = [f for e, f in self._history if e <= detected_at]
        if not frames:
            return detected_at - _TYPICAL_LAG
        audio = np.concatenate(frames)[-_ANALYSIS:]
        return detected_at - len(audio) + find_word_end(audio)


_STOP = object()
_RESET = object()


class WakeDetector:
    """openWakeWord in one worker thread; :class:`WakeEvent` delivered to ``on_wake`` on ``loop``.

    Constructing it loads the models (a second or so; raises :class:`WakeModelError`), so build it in an
    executor or with :meth:`create`. Then :meth:`feed` the capture's blocks from the loop: it never blocks,
    and when the worker is more than ``max_backlog_s`` behind, blocks are dropped and counted.
    :meth:`reset` after a session; :meth:`close` at the end.
    """

    def __init__(
        self,
        cfg: WakeConfig,
        on_wake: Callable[[WakeEvent], None],
        *,
        loop: asyncio.AbstractEventLoop,
        max_backlog_s: float = 2.0,
    ) -> None:
        self.cfg = cfg
        self._on_wake = on_wake
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._backlog_lock = threading.Lock()
        self._backlog = 0  # samples queued, not yet processed
        self._max_backlog = int(max_backlog_s * WAKE_RATE)
        self.drops = 0
        self.failures = 0
        self.last_failure = ""
        self._engine = WakeEngine(cfg)
        self._thread = threading.Thread(target=self._work, name="kioskd-wake", daemon=True)
        self._thread.start()
        _log.info("wake word models loaded: %s (threshold %.2f)", ", ".join(self.model_names), cfg.threshold)

    @classmethod
    async def create(
        cls, cfg: WakeConfig, on_wake: Callable[[WakeEvent], None], *, max_backlog_s: float = 2.0
    ) -> WakeDetector:
        """Load the models without blocking the running loop."""
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(lambda: cls(cfg, on_wake, loop=loop, max_backlog_s=max_backlog_s))

    @property
    def stats(self) -> WakeStats:
        e = self._engine
        return WakeStats(e.frames, e.inferences, e.skipped, self.drops, e.detections, self.loaded)

    @property
    def loaded(self) -> bool:
        return self._thread.is_alive()

    @property
    def model_names(self) -> list[str]:
        return list(self._engine.names.values())

    def _work(self) -> None:
        engine, loop = self._engine, self._loop
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _RESET:
                engine.reset()
                continue
            if isinstance(item, asyncio.Future):
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, item)
                continue
            pcm, end = item
            with self._backlog_lock:
                self._backlog -= len(pcm)
            try:
                events = engine.process(pcm, end)
            except Exception as exc:  # one bad frame must not end detection for the day
                self.failures += 1
                self.last_failure = str(exc)
                if self.failures <= 3 or self.failures % 1000 == 0:
                    _log.error("wake inference failed (%d times so far): %s", self.failures, exc)
                continue
            for event in events:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._emit, event)

    def _emit(self, event: WakeEvent) -> None:
        _log.debug("wake word %s (score %.2f) ended at sample %d", event.model, event.score, event.end16k)
        try:
            self._on_wake(event)
        except Exception:
            _log.exception("wake handler failed")

    def feed(self, pcm16k: Int16Array, end16k: int) -> bool:
        """Queue a block for detection; False (and counted) when dropped because the worker is behind."""
        if not self._thread.is_alive():
            return False
        with self._backlog_lock:
            if self._backlog + len(pcm16k) > self._max_backlog:
                self.drops += 1
                return False
            self._backlog += len(pcm16k)
        self._queue.put((pcm16k, end16k))
        return True

    @property
    def backlog_s(self) -> float:
        return self._backlog / WAKE_RATE

    def reset(self) -> None:
        """Forget earlier audio and refractory state (after a session), in order with the fed blocks."""
        self._queue.put(_RESET)

    async def drain(self) -> None:
        """Wait until every block fed so far has been processed and its events delivered."""
        if not self._thread.is_alive():
            return
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(done)
        await done

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker after the frame it is on (waits at most ``timeout``; a wedged one is left behind)."""
        self._queue.put(_STOP)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def scan_clip(
    frames: np.ndarray,
    rate: int,
    wake: WakeConfig,
    audio: AudioConfig,
    *,
    tail_s: float = 1.0,
) -> list[WakeEvent]:
    """Run a recording through the same path as the live microphone, as fast as the CPU allows.

    ``frames`` is int16, (n,) or (n, channels); the configured ``use_channels`` apply when the channel count
    matches ``audio.input_channels``, otherwise all channels are mixed. ``tail_s`` of silence is appended
    so a wake word at the very end can still be scored.
    """
    pcm = frames if frames.ndim == 2 else frames[:, None]
    channels = pcm.shape[1]
    use = list(audio.use_channels) if channels == audio.input_channels else list(range(channels))
    converter = CaptureConverter(rate, use)
    events: list[WakeEvent] = []
    detector = await WakeDetector.create(wake, events.append)
    try:
        block = max(1, round(rate * audio.block_ms / 1000))
        tail = np.zeros((int(tail_s * rate), channels), dtype=np.int16)
        signal = np.concatenate([pcm, tail])
        for n, offset in enumerate(range(0, len(signal), block)):
            converted = converter.convert(signal[offset : offset + block])
            detector.feed(converted.pcm16k, converted.end16k)
            if n % 25 == 24:  # keep the backlog well under the detector's limit: nothing is dropped
                await detector.drain()
        await detector.drain()
    finally:
        detector.close()
    return events


def _wake_config(base: WakeConfig, models: list[str] | None, threshold: float | None) -> WakeConfig:
    from pydantic import ValidationError

    data = base.model_dump()
    if models:
        data["models"] = models
    if threshold is not None:
        data["threshold"] = threshold
    try:
        return WakeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise WakeModelError(problems) from None


def cli_wake_test(args: argparse.Namespace) -> int:
    """``kioskd wake-test FILE.wav``: 0 when a wake word is found, 1 when none, 2 when it cannot run."""
    from kioskd.audio.devices import load_local_settings
    from kioskd.audio.wav import WavError, read_wav
    from kioskd.config import ConfigError, report_problems

    try:
        settings = load_local_settings(args.config)
    except ConfigError as exc:
        return report_problems(exc.problems, args.config)
    try:
        clip = read_wav(Path(args.wav))
        wake = _wake_config(settings.wake, args.model, args.threshold)
        resolve_models(wake.models)
    except (WakeModelError, WavError) as exc:
        print(f"kioskd wake-test: {exc}", file=sys.stderr)
        return EX_WAKE_INPUT
    try:
        events = asyncio.run(scan_clip(to_int16(clip.frames), clip.rate, wake, settings.audio))
    except WakeModelError as exc:
        print(f"kioskd wake-test: {exc}", file=sys.stderr)
        return EX_WAKE_INPUT
    print(f"{args.wav}: {clip.duration_s:.2f} s, {clip.rate} Hz, {clip.channels} channel(s); "
          f"models {', '.join(wake.models)}, threshold {wake.threshold:g}")
    for event in events:
        print(f"  {event.model}  ended at {event.end16k / WAKE_RATE:7.2f} s  score {event.score:.3f}")
    if not events:
        print("no wake word detected")
        return EX_WAKE_NONE
    print(f"{len(events)} wake word(s) detected")
    return 0

