"""Under systemd's MemoryDenyWriteExecute=yes cffi cannot make PortAudio callbacks; audio must still flow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.dsp import REALTIME_RATE, to_int16
from kioskd.audio.wav import write_wav
from tests.audio.signals import frame_frequencies, seconds_of, tone
from tests.rig import RATE, AudioRig

ROOT = Path(__file__).resolve().parents[2]


def mdwe_supported() -> bool:
    probe = "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.rig
def test_capture_and_playback_work_without_callbacks(audio_rig: AudioRig, tmp_path: Path) -> None:
    if not mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3), so the hardened process cannot be imitated")
    beep = tmp_path / "beep.wav"
    write_wav(beep, to_int16(tone(1000, 0.4, RATE, amplitude=0.3)), RATE)
    recording = audio_rig.record_speaker()
    result = subprocess.run([sys.executable, "-m", "tests.audio.mdwe_probe", str(beep)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, env=audio_rig.env, check=False)
    heard = recording.stop()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["callbacks_possible"] is False  # the process really was hardened
    assert "callbacks are not possible here" in result.stderr  # and kioskd said what it did about it
    assert sorted(report["states"]) == [["input", True], ["output", True]]
    assert report["capture_peak"] > 0.2  # the beep played into the microphone was captured
    assert report["played_samples"] == REALTIME_RATE // 2
    assert seconds_of(frame_frequencies(heard, 24_000), 700) == pytest.approx(0.5, abs=0.05)
    assert np.max(np.abs(heard)) > 0.2
