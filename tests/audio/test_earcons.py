"""The chimes: built in, distinct, at the configured volume, and replaceable by WAV files."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.dsp import REALTIME_RATE, peak_dbfs, to_int16
from kioskd.audio.earcons import Earcon, Earcons, lookup
from kioskd.audio.wav import WavError, write_wav
from kioskd.config import AudioConfig
from tests.audio.signals import tone


def spectrum(pcm: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.fft.rfft(pcm.astype(np.float64), REALTIME_RATE))
    normalised: np.ndarray = magnitude / np.linalg.norm(magnitude)
    return normalised


def test_built_in_sounds_are_short_clean_and_tell_apart() -> None:
    earcons = Earcons(AudioConfig(earcon_volume=1.0))
    for earcon in Earcon:
        pcm = earcons[earcon]
        assert pcm.dtype == np.int16
        assert 0.15 <= len(pcm) / REALTIME_RATE <= 1.0
        assert -4.0 < peak_dbfs(pcm) <= -3.0  # peak 0.7: loud, with headroom for the mix
        assert abs(int(pcm[0])) < 200 and abs(int(pcm[-1])) < 200  # faded in and out: no click
        assert earcons.sources[earcon] == "built-in"
    # No two sound alike: their spectra overlap little.
    for a, b in combinations(Earcon, 2):
        similarity = float(np.dot(spectrum(earcons[a]), spectrum(earcons[b])))
        assert similarity < 0.5, f"{a.name} and {b.name} sound too alike"
    # Wake rises, end falls: compare the pitch at the start with the pitch at the end.
    def pitch(pcm: np.ndarray) -> int:
        return int(np.argmax(spectrum(pcm)))

    wake, end = earcons.wake, earcons.end
    assert pitch(wake[-len(wake) // 3 :]) > pitch(wake[: len(wake) // 4])
    assert pitch(end[-len(end) // 3 :]) < pitch(end[: len(end) // 4])


def test_volume_scales_every_sound() -> None:
    loud, quiet = Earcons(AudioConfig(earcon_volume=1.0)), Earcons(AudioConfig(earcon_volume=0.25))
    for earcon in Earcon:
        assert peak_dbfs(quiet[earcon]) == pytest.approx(peak_dbfs(loud[earcon]) - 12.04, abs=0.05)
    assert not np.any(Earcons(AudioConfig(earcon_volume=0.0)).wake)


def test_a_wav_of_any_rate_and_channels_replaces_a_sound(tmp_path: Path) -> None:
    chime = tmp_path / "chime.wav"
    left = tone(600, 0.4, 8000, amplitude=0.8)
    write_wav(chime, to_int16(np.stack([left, left], axis=1)), 8000)
    earcons = Earcons(AudioConfig(wake_chime=chime, earcon_volume=0.5))
    pcm = earcons["wake"]
    assert len(pcm) == pytest.approx(0.4 * REALTIME_RATE, abs=2)
    assert peak_dbfs(pcm) == pytest.approx(20 * np.log10(0.4), abs=0.2)
    assert earcons.sources[Earcon.WAKE] == str(chime)
    assert earcons.sources[Earcon.END] == "built-in"


def test_a_broken_override_names_the_setting(tmp_path: Path) -> None:
    broken = tmp_path / "end.wav"
    broken.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(WavError, match=r"^audio\.end_chime: .*end\.wav: not a readable WAV file"):
        Earcons(AudioConfig(end_chime=broken))
    with pytest.raises(WavError, match=r"audio\.budget_tone: .*no such file"):
        Earcons(AudioConfig(budget_tone=tmp_path / "missing.wav"))


def test_sounds_by_name() -> None:
    assert lookup("wake") is Earcon.WAKE and lookup("error_tone") is Earcon.ERROR
    assert lookup(Earcon.BUDGET) is Earcon.BUDGET
    with pytest.raises(KeyError, match="there are wake, end, error, budget"):
        lookup("fanfare")
