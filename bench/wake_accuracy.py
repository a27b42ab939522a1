"""Wake-word accuracy: detection rate on a positive set and false wakes per hour on 30 minutes of other audio.

The material is :mod:`bench.wakeset`: 216 "hey jarvis" clips (12 espeak-ng voices x 3 speeds x 3 levels x
quiet/noisy) and 30 minutes of other sentences (some close: "Jarvis Cocker", "hey Travis", "harvest"), babble,
noise and hum. Everything runs through :class:`kioskd.wake.WakeEngine` as configured by default (hey_jarvis,
refractory 2 s, silence gate -60 dBFS), faster than real time, split over two worker processes.

One pass gives every threshold: each inference's score is recorded with its position on the audio timeline,
and the detector's rule (score >= threshold, then nothing from that model for ``refractory_s`` of audio) is
applied afterwards for 0.3, 0.5 (the default) and 0.7. That this reproduces the engine is checked: at the
engine's own threshold the derived detections must equal the events the engine itself reported.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from bench.common import machine, say, table, to_int16, write_results
from bench.wakeset import RATE, positives

NAME = "wake_accuracy"
THRESHOLDS = (0.3, 0.5, 0.7)
NEGATIVE_MINUTES = 30.0
WORKERS = 2
BLOCK = 320  # 20 ms at 16 kHz, as the capture path delivers it

Scored = list[tuple[int, float]]  # (end of frame on the 16 kHz timeline, score), in inference order


def _engine() -> tuple[Any, Scored]:
    """A default WakeEngine whose every inference is recorded (score and timeline position)."""
    from kioskd.config import WakeConfig
    from kioskd.wake import WakeEngine

    engine = WakeEngine(WakeConfig())
    scored: Scored = []
    predict, infer = engine.model.predict, engine._infer
    last: dict[str, float] = {}

    def recording_predict(frame: np.ndarray) -> Any:
        scores = predict(frame)
        last["score"] = float(max(scores.values()))
        return scores

    def recording_infer(frame: np.ndarray, end: int) -> Any:
        events = infer(frame, end)
        scored.append((end, last["score"]))
        return events

    engine.model.predict = recording_predict
    engine._infer = recording_infer  # type: ignore[method-assign]
    return engine, scored


def score_clips(clips: Sequence[np.ndarray], reset_each: bool) -> tuple[list[Scored], list[list[int]]]:
    """Run clips (int16, 16 kHz) through one engine; per clip, every score and where the engine itself
    reported a wake word ending."""
    engine, scored = _engine()
    per_clip: list[Scored] = []
    events: list[list[int]] = []
    position = 0
    for clip in clips:
        if reset_each:
            engine.reset()
            position = 0
        scored.clear()
        found = []
        for start in range(0, len(clip) - BLOCK + 1, BLOCK):
            position += BLOCK
            found += [e.end16k for e in engine.process(clip[start:start + BLOCK], position)]
        per_clip.append(list(scored))
        events.append(found)
    return per_clip, events


def detections(scored: Scored, threshold: float, refractory: int, last: int | None = None) -> list[int]:
    """The detector's rule applied to recorded scores: the frame ends at which it fires."""
    fired = []
    for end, score in scored:
        if score >= threshold and (last is None or end - last >= refractory):
            fired.append(end)
            last = end
    return fired


def _agree(frame_ends: list[int], word_ends: list[int]) -> bool:
    return len(frame_ends) == len(word_ends) and all(
        f - RATE <= w <= f for f, w in zip(frame_ends, word_ends, strict=True))


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def main() -> int:
    started = machine()
    from kioskd.config import WakeConfig
    from kioskd.wake import find_word_end  # noqa: F401  (fail early if the package is broken)

    cfg = WakeConfig()
    refractory = int(cfg.refractory_s * RATE)
    say("making the positive set (espeak-ng)...")
    pos = positives()
    say("making 30 minutes of negatives (espeak-ng)...")
    from bench.wakeset import negatives

    negative_pieces = [to_int16(p) for p in negatives(NEGATIVE_MINUTES)]
    negative_s = sum(len(p) for p in negative_pieces) / RATE
    # Negatives as two continuous streams, one per worker, heard without a reset like a kiosk hears a day.
    streams = [np.concatenate(part) for part in _split(negative_pieces, WORKERS)]
    began = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        pos_jobs = [pool.submit(score_clips, [to_int16(c.audio) for c in part], True)
                    for part in _split(pos, WORKERS)]
        neg_jobs = [pool.submit(score_clips, [stream], False) for stream in streams]
        pos_parts = [job.result() for job in pos_jobs]
        neg_parts = [job.result() for job in neg_jobs]
    elapsed = time.monotonic() - began
    # Put the positives back in their original order.
    pos_scored: list[Scored] = [[] for _ in pos]
    pos_events: list[list[int]] = [[] for _ in pos]
    for worker, (scored, events) in enumerate(pos_parts):
        for k, (s, e) in enumerate(zip(scored, events, strict=True)):
            pos_scored[worker + k * WORKERS] = s
            pos_events[worker + k * WORKERS] = e
    neg_scored = [part[0][0] for part in neg_parts]
    neg_events = [part[1][0] for part in neg_parts]

    # The engine reports where the word ended (up to a second before the frame that fired): same count, and
    # each of its word ends within the second before the corresponding derived frame end.
    consistent = all(_agree(detections(s, cfg.threshold, refractory), e)
                     for s, e in zip(pos_scored + neg_scored, pos_events + neg_events, strict=True))
    by_threshold: dict[str, Any] = {}
    for threshold in THRESHOLDS:
        detected = [bool(detections(s, threshold, refractory)) for s in pos_scored]
        false = sum(len(detections(s, threshold, refractory)) for s in neg_scored)
        groups: dict[str, list[bool]] = defaultdict(list)
        for clip, hit in zip(pos, detected, strict=True):
            voice, speed, level, noise = clip.label.split("/")
            for key in (f"level {level}", f"speed {speed}", noise, f"voice {voice}"):
                groups[key].append(hit)
        by_threshold[f"{threshold:g}"] = {
            "detection_rate": sum(detected) / len(detected), "detected": sum(detected), "clips": len(detected),
            "false_wakes": false, "false_wakes_per_hour": false / negative_s * 3600,
            "detection_rate_by_condition": {k: sum(v) / len(v) for k, v in sorted(groups.items())},
            "missed": [c.label for c, hit in zip(pos, detected, strict=True) if not hit],
        }
    best = [max((sc for _, sc in s), default=0.0) for s in pos_scored]
    figures: dict[str, Any] = {
        "positive_clips": len(pos), "negative_seconds": negative_s, "workers": WORKERS,
        "wall_seconds": elapsed, "audio_seconds": negative_s + sum(len(c.audio) for c in pos) / RATE,
        "default_threshold": cfg.threshold, "refractory_s": cfg.refractory_s,
        "silence_gate_dbfs": cfg.silence_gate_dbfs,
        "derived_detections_match_the_engine": consistent,
        "best_score_per_clip": {"p5": float(np.percentile(best, 5)), "p50": float(np.percentile(best, 50))},
        "by_threshold": by_threshold,
    }
    rows = [(t, f"{v['detection_rate']:.1%}", f"{v['detected']}/{v['clips']}", v["false_wakes"],
             f"{v['false_wakes_per_hour']:.2f}") for t, v in by_threshold.items()]
    print(table(f"Wake accuracy: hey_jarvis, {len(pos)} positive clips, {negative_s / 60:.1f} min of negatives",
                ["threshold", "detection", "clips", "false wakes", "per hour"], rows))
    default = by_threshold[f"{cfg.threshold:g}"]["detection_rate_by_condition"]
    print(table(f"detection by condition at the default threshold {cfg.threshold:g}", ["condition", "rate"],
                [(k, f"{v:.0%}") for k, v in default.items() if not k.startswith("voice")]))
    print(f"derived detections match the engine's own at {cfg.threshold:g}: {consistent}; "
          f"{figures['audio_seconds'] / 60:.1f} min of audio in {elapsed:.0f} s on {WORKERS} processes")
    print(f"results: {write_results(NAME, figures, started)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
