"""``kioskd demo`` — the README's main command — holds a whole conversation and leaves the reply on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.signal import correlate

from kioskd.audio.wav import read_wav_mono
from kioskd.demo import REPLIES
from kioskd.sim.voice import ReplyVoice

REPO = Path(__file__).resolve().parents[2]


def best_match(haystack: np.ndarray, needle: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``needle`` anywhere in ``haystack`` (1.0: identical)."""
    corr = correlate(haystack, needle, mode="valid", method="fft")
    energy = np.convolve(haystack.astype(np.float64) ** 2, np.ones(len(needle)), mode="valid")
    norm = float(np.linalg.norm(needle))
    windows = np.sqrt(np.maximum(energy, 0.0))
    audible = windows > 0.05 * norm  # a near-silent stretch matches nothing
    if not audible.any():
        return 0.0
    return float((np.abs(corr[audible]) / (norm * windows[audible])).max())


def test_demo_runs_a_whole_conversation(tmp_path: Path) -> None:
    out_wav = tmp_path / "speaker.wav"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "KIOSKD_", "NOTIFY_", "JOURNAL_"))}
    result = subprocess.run(
        [sys.executable, "-m", "kioskd", "demo", "--output", str(out_wav), "--config", os.devnull],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "Traceback" not in result.stderr
    for expected in ("wake word 'hey_jarvis'", "connected;", "barge-in: playback flushed",
                     "server truncated the reply at", "session closed (idle)", "listening again", "demo: OK"):
        assert expected in text, f"{expected!r} missing from the timeline:\n{text}"

    played = read_wav_mono(out_wav, 24_000)
    reply = np.frombuffer(ReplyVoice().pcm(REPLIES[0]), dtype="<i2").astype(np.float32) / 32768
    # The first second of the first reply was played (it was cut by the barge-in after about 2 s).
    assert best_match(played, reply[: 24_000]) > 0.9
    # ... and the end of the interrupted reply never reached the speaker.
    assert best_match(played, reply[-24_000:]) < 0.5
