"""``kioskd wake-test FILE.wav``, run as an operator would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.dsp import to_int16
from kioskd.audio.wav import write_wav
from tests.audio.signals import load_mono
from tests.conftest import Speak

ROOT = Path(__file__).resolve().parents[2]


def wake_test(*args: str | Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIOSKD_", "AZURE_OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "kioskd", "wake-test", *map(str, args), "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False,
    )


@pytest.fixture
def stereo_wake_word(speak: Speak, tmp_path: Path) -> Path:
    """ "hey jarvis" as a 44.1 kHz stereo file: not what the detector eats, so it has to be converted."""
    rate = 44100
    phrase = load_mono(speak("hey jarvis", voice="en-gb"), rate) * np.float32(0.5)
    pad = np.zeros(rate, dtype=np.float32)
    mono = np.concatenate([pad, phrase, pad])
    path = tmp_path / "positive.wav"
    write_wav(path, to_int16(np.stack([mono, mono * np.float32(0.8)], axis=1)), rate)
    return path


def test_a_recording_with_the_wake_word_exits_0_and_says_when(stereo_wake_word: Path, tmp_path: Path) -> None:
    result = wake_test(stereo_wake_word, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "hey_jarvis  ended at" in line]
    assert len(lines) == 1
    ended_at = float(lines[0].split("ended at")[1].split("s")[0])
    assert 1.5 < ended_at < 2.2  # one second of silence, then the ~0.7 s phrase
    assert "score" in lines[0]
    assert "44100 Hz, 2 channel(s)" in result.stdout


def test_a_recording_without_it_exits_1(speak: Speak, tmp_path: Path) -> None:
    result = wake_test(speak("Where is the nearest train station?", voice="en-gb"), tmp_path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "no wake word detected" in result.stdout


def test_model_and_threshold_options(stereo_wake_word: Path, tmp_path: Path) -> None:
    # Both models run, and with a threshold no score reaches, the phrase that woke it above goes unnoticed.
    strict = wake_test(stereo_wake_word, "--model", "alexa", "--model", "hey_jarvis", "--threshold", "0.9999",
                       tmp_path=tmp_path)
    assert strict.returncode == 1, strict.stderr
    assert "models alexa, hey_jarvis, threshold 0.9999" in strict.stdout
    unknown = wake_test(stereo_wake_word, "--model", "hey_computer", tmp_path=tmp_path)
    assert unknown.returncode == 2
    assert "unknown wake model 'hey_computer'" in unknown.stderr
    bad = wake_test(stereo_wake_word, "--threshold", "1.5", tmp_path=tmp_path)
    assert bad.returncode == 2 and "threshold" in bad.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.wav", os.urandom(4000), "not a readable WAV file"),
        ("empty.wav", b"", "not a readable WAV file"),
        ("header-only.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable WAV file"),
    ],
)
def test_a_corrupt_file_exits_2_with_a_message_and_no_traceback(
    name: str, content: bytes, message: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = wake_test(path, tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_truncated_or_missing_file_exits_2(stereo_wake_word: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(stereo_wake_word.read_bytes()[:20000])
    result = wake_test(truncated, tmp_path=tmp_path)
    assert result.returncode == 2 and "truncated" in result.stderr
    missing = wake_test(tmp_path / "nowhere.wav", tmp_path=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr
