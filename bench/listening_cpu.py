"""P1: CPU while listening, per second of audio, against a bare openWakeWord loop on the same audio.

Target: the daemon's listening path costs at most 1.10 x a bare ``Model.predict`` loop.

Both run in this process, one after the other, over the same recording built at run time (espeak-ng speech,
a quiet room, digital silence, noise), with process CPU time (``time.process_time``: every thread of the
process, so the detector's worker thread counts) measured around each and warm-up excluded:

* **bare**: ``openwakeword.model.Model([hey_jarvis], inference_framework="onnx", ncpu=1)`` fed the
  recording at 16 kHz in 1280-sample frames;
* **daemon**: the recording as a 48 kHz microphone delivers it, 20 ms blocks through the capture path's
  ``CaptureConverter`` (channel mix, resampling to 16 and 24 kHz) into ``Daemon.on_block`` (pre-roll ring)
  and on to ``WakeDetector.feed`` (worker thread, frames, refractory, silence gate), exactly as
  ``kioskd run`` wires them — with ``wake.silence_gate_dbfs`` at its default (-60 dBFS) and off.

The pacing is faster than real time (the detector is drained every half second so nothing is dropped);
CPU per audio second does not depend on the pace. The silence gate must not change what is detected, so
the wake set (:mod:`bench.wakeset`, every clip preceded by quiet room tone) is run through
:class:`kioskd.wake.WakeEngine` with the gate on and off and the detections compared clip by clip.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    SENTENCES,
    VOICES,
    FloatArray,
    at_level,
    espeak,
    machine,
    room_tone,
    say,
    summary,
    table,
    to_int16,
    write_results,
)
from bench.wakeset import ROOM_DBFS, positives, prefetch
from kioskd.audio.dsp import CaptureConverter, resample
from kioskd.audio.playback import JitterBuffer
from kioskd.budget import Budget, Ledger
from kioskd.config import Settings, WakeConfig, load_settings
from kioskd.daemon import Daemon
from kioskd.wake import FRAME, WakeDetector, WakeEngine, WakeEvent, resolve_models

NAME = "listening_cpu"
DEVICE_RATE = 48_000
BLOCK = DEVICE_RATE // 50  # 20 ms
TARGET_RATIO = 1.10
ROUNDS = 3
WARM_UP_S = 3.0


def recording(seconds: float = 120.0, seed: int = 3) -> FloatArray:
    """A kiosk's day in miniature at 16 kHz: speech, a quiet room, digital silence, noise, in turns."""
    rng = np.random.default_rng(seed)
    prefetch([(text, voice, 175) for text in SENTENCES for voice in VOICES[:4]])
    pieces: list[FloatArray] = []
    total = 0
    i = 0
    while total < seconds * 16_000:
        kind = i % 4
        if kind == 0:  # two sentences of speech
            for _ in range(2):
                text, voice = SENTENCES[int(rng.integers(len(SENTENCES)))], VOICES[int(rng.integers(4))]
                pieces.append(at_level(espeak(text, voice, 175), float(rng.uniform(-30, -20))))
        elif kind == 1:  # a quiet room
            pieces.append(room_tone(float(rng.uniform(4, 10)), ROOM_DBFS, rng))
        elif kind == 2:  # nothing at all (a muted or digital-silent input)
            pieces.append(np.zeros(int(rng.uniform(2, 5) * 16_000), dtype=np.float32))
        else:  # noise: fans, traffic
            n = int(rng.uniform(3, 6) * 16_000)
            pieces.append(np.asarray(rng.normal(0, 10 ** (-35 / 20), n), dtype=np.float32))
        total += len(pieces[-1])
        i += 1
    return np.concatenate(pieces)[: int(seconds * 16_000)]


def bare_loop(pcm16k: np.ndarray, warm_up: np.ndarray) -> float:
    """CPU seconds for the bare openWakeWord loop over ``pcm16k`` (int16, 16 kHz)."""
    from openwakeword.model import Model

    [(_, path)] = resolve_models(["hey_jarvis"])
    model = Model(wakeword_models=[str(path)], inference_framework="onnx", ncpu=1)
    for i in range(0, len(warm_up) - FRAME + 1, FRAME):
        model.predict(warm_up[i:i + FRAME])
    start = time.process_time()
    for i in range(0, len(pcm16k) - FRAME + 1, FRAME):
        model.predict(pcm16k[i:i + FRAME])
    return time.process_time() - start


def _settings(state_dir: Path, gate: float | None) -> Settings:
    return load_settings(Path(os.devnull), environ={}, overrides={
        "realtime": {"endpoint": "ws://127.0.0.1:9"},
        "wake": {"silence_gate_dbfs": gate},
        "budget": {"state_dir": str(state_dir)},
        "health": {"enabled": False},
    })


async def daemon_path(pcm48k: np.ndarray, warm_up48k: np.ndarray, gate: float | None) -> tuple[float, dict[str, int]]:
    """CPU seconds for capture conversion + ``Daemon.on_block`` + ``WakeDetector`` over ``pcm48k``."""
    with tempfile.TemporaryDirectory(prefix="kioskd-bench-") as tmp:
        settings = _settings(Path(tmp), gate)

        async def no_session(speaker: Any) -> Any:
            raise RuntimeError("listening only")

        daemon = Daemon(settings, speaker=JitterBuffer(settings.audio), open_session=no_session,
                        budget=Budget(settings.budget, Ledger(Path(tmp))))
        wakes: list[WakeEvent] = []
        detector = await WakeDetector.create(settings.wake, wakes.append)  # listening only: count wakes
        daemon.detector = detector
        daemon.on_mic_state(True, "")
        converter = CaptureConverter(DEVICE_RATE, [0])
        try:
            await _feed(daemon, detector, converter, warm_up48k)
            detector.reset()
            await detector.drain()
            start = time.process_time()
            await _feed(daemon, detector, converter, pcm48k)
            cpu = time.process_time() - start
            stats = detector.stats
        finally:
            detector.close()
    return cpu, {"frames": stats.frames, "inferences": stats.inferences, "skipped": stats.skipped,
                 "drops": stats.drops, "wakes": len(wakes)}


async def _feed(daemon: Daemon, detector: WakeDetector, converter: CaptureConverter, pcm48k: np.ndarray) -> None:
    for n, offset in enumerate(range(0, len(pcm48k) - BLOCK + 1, BLOCK)):
        daemon.on_block(converter.convert(pcm48k[offset:offset + BLOCK]))
        if n % 25 == 24:
            await detector.drain()
    await detector.drain()


def gate_equivalence() -> dict[str, Any]:
    """The wake set through ``WakeEngine`` with the silence gate at -60 dBFS and off: same detections?"""
    clips = [clip for clip in positives() if clip.label.endswith("/quiet")]  # silence around the phrase
    found: dict[str, list[list[tuple[int, float]]]] = {}
    skipped = 0
    for label, gate in (("gate_on", -60.0), ("gate_off", None)):
        engine = WakeEngine(WakeConfig(silence_gate_dbfs=gate))
        per_clip = []
        for clip in clips:
            engine.reset()
            pcm = to_int16(clip.audio)
            events = []
            for end in range(320, len(pcm) + 1, 320):
                events += engine.process(pcm[end - 320:end], end)
            per_clip.append([(e.end16k, round(e.score, 3)) for e in events])
        found[label] = per_clip
        if gate is not None:
            skipped = engine.skipped
    on, off = found["gate_on"], found["gate_off"]
    detected_on = sum(1 for events in on if events)
    detected_off = sum(1 for events in off if events)
    same_clips = sum(1 for a, b in zip(on, off, strict=True) if bool(a) == bool(b))
    same_events = sum(1 for a, b in zip(on, off, strict=True) if [e for e, _ in a] == [e for e, _ in b])
    return {"clips": len(clips), "detected_gate_on": detected_on, "detected_gate_off": detected_off,
            "clips_with_same_outcome": same_clips, "clips_with_identical_detections": same_events,
            "frames_skipped_by_gate": skipped}


def main() -> int:
    started = machine()
    say("building the recording (espeak-ng)...")
    audio16 = recording()
    audio_s = len(audio16) / 16_000
    warm16 = recording(WARM_UP_S, seed=99)
    pcm16 = to_int16(audio16)
    pcm48 = to_int16(resample(audio16, 16_000, DEVICE_RATE))
    warm48 = to_int16(resample(warm16, 16_000, DEVICE_RATE))
    runs: dict[str, list[float]] = {"bare": [], "daemon_gate_on": [], "daemon_gate_off": []}
    stats: dict[str, dict[str, int]] = {}
    for round_ in range(ROUNDS):
        say(f"round {round_ + 1}/{ROUNDS}: bare loop, daemon path gate on, gate off ({audio_s:.0f} s of audio each)")
        runs["bare"].append(bare_loop(pcm16, to_int16(warm16)))
        for label, gate in (("daemon_gate_on", -60.0), ("daemon_gate_off", None)):
            cpu, stats[label] = asyncio.run(daemon_path(pcm48, warm48, gate))
            runs[label].append(cpu)
    per_s = {k: [cpu / audio_s for cpu in v] for k, v in runs.items()}
    bare = float(np.median(per_s["bare"]))
    figures: dict[str, Any] = {
        "audio_seconds": audio_s,
        "rounds": ROUNDS,
        "cpu_s_per_audio_s": {k: summary(v) for k, v in per_s.items()},
        "ratio_to_bare": {k: float(np.median(v)) / bare for k, v in per_s.items() if k != "bare"},
        "detector_stats": stats,
        "target_ratio": TARGET_RATIO,
    }
    say("wake set through WakeEngine with the silence gate on and off...")
    figures["gate_equivalence"] = gate_equivalence()
    figures["meets_target"] = {k: v <= TARGET_RATIO for k, v in figures["ratio_to_bare"].items()}
    rows = [(k, f"{np.median(v):.4f}", f"{min(v):.4f}", f"{max(v):.4f}",
             "1.00x" if k == "bare" else f"{figures['ratio_to_bare'][k]:.3f}x") for k, v in per_s.items()]
    print(table(f"P1 listening CPU ({audio_s:.0f} s of audio, {ROUNDS} rounds, median; target <= {TARGET_RATIO}x)",
                ["path", "CPU-s/audio-s", "min", "max", "vs bare"], rows))
    eq = figures["gate_equivalence"]
    print(f"wake set ({eq['clips']} clips): detected {eq['detected_gate_on']} with the gate, "
          f"{eq['detected_gate_off']} without; same outcome on {eq['clips_with_same_outcome']} clips, "
          f"identical detections on {eq['clips_with_identical_detections']}")
    print(f"results: {write_results(NAME, figures, started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
