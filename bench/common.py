"""What every benchmark shares: the machine it ran on, its results file, its table, and its test audio.

Each benchmark is a module run as ``python -m bench.<name>``; it prints a table and writes
``bench/results/<name>.json`` holding the figures, the command that produced them and the machine
(CPU model and count, load average before the run, library versions), so a number in the README can
always be traced back to how it was measured.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import os
import platform
import subprocess
import sys
import wave
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kioskd.audio.dsp import resample
from tests.audio.signals import OTHER_SENTENCES

RESULTS = Path(__file__).resolve().parent / "results"
FloatArray = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where the figures come from: they mean little without it."""
    versions: dict[str, str | None] = {}
    for package in ("numpy", "onnxruntime", "openwakeword", "websockets", "soxr", "sounddevice"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "versions": versions,
    }


def command(name: str) -> str:
    return f".venv/bin/python -m bench.{name}"


def write_results(name: str, figures: dict[str, Any], started: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json``; ``started`` is :func:`machine` as taken before the run."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {
        "benchmark": name,
        "command": command(name),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": started,
        **figures,
    }
    path.write_text(json.dumps(body, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table, right-aligned numbers, for the terminal and for pasting into the README."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for row in cells[1:]:
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%x"))
    except ValueError:
        return False
    return True


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, max (``nan`` for an empty list, so a table still prints)."""
    if not values:
        nan = math.nan
        return {"n": 0, "mean": nan, "p50": nan, "p95": nan, "max": nan}
    data = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "mean": float(data.mean()), "p50": float(np.percentile(data, 50)),
            "p95": float(np.percentile(data, 95)), "max": float(data.max())}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- audio ---------------------------------------------------------------------------------------------

@cache
def espeak(text: str, voice: str = "en-us", wpm: int = 175) -> FloatArray:
    """espeak-ng speech as float32 at 16 kHz (peak as espeak makes it, about -1 dBFS)."""
    result = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm)], input=text.encode(),
                            capture_output=True, check=True, timeout=60)
    with wave.open(io.BytesIO(result.stdout)) as wav:
        rate = wav.getframerate()
        frames = wav.readframes(2**31 - 1)
    pcm = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return resample(pcm, rate, 16_000)


def at_level(signal: FloatArray, dbfs: float) -> FloatArray:
    """``signal`` scaled so its RMS over the loud part (frames within 30 dB of the loudest) is ``dbfs``."""
    frames = signal[: len(signal) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = rms[rms > rms.max() * 10 ** (-30 / 20)] if rms.max() > 0 else rms
    level = float(np.sqrt(np.mean(loud**2))) if len(loud) else 0.0
    if level == 0.0:
        return signal
    return np.asarray(signal * (10 ** (dbfs / 20) / level), dtype=np.float32)


def room_tone(seconds: float, dbfs: float, rng: np.random.Generator, rate: int = 16_000) -> FloatArray:
    """A quiet microphone's hiss: pink-ish noise at ``dbfs`` RMS."""
    n = int(seconds * rate)
    white = rng.normal(0.0, 1.0, n + 64)
    pinkish = np.convolve(white, np.ones(8) / 8, mode="same")[:n] + 0.3 * white[:n]
    pinkish /= np.sqrt(np.mean(pinkish**2)) or 1.0
    return np.asarray(pinkish * 10 ** (dbfs / 20), dtype=np.float32)


def to_int16(signal: FloatArray) -> Int16Array:
    return np.asarray(np.clip(np.rint(signal * 32768.0), -32768, 32767), dtype=np.int16)


SENTENCES = OTHER_SENTENCES
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
          "en-us-nyc", "en-us+f3", "en-gb+f4", "en-us+m4", "en-029+f2")
