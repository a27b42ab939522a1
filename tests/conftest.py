"""Fixtures shared by the whole suite: the virtual audio rig and synthesized speech."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.rig import DEFAULT_RATE, AudioRig, missing_tools, running_rig, synthesize

Speak = Callable[..., Path]


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def speak(speech_dir: Path) -> Speak:
    """``speak("hey jarvis", voice="en-gb", rate=160) -> Path``: espeak-ng speech, made once per session.

    The default pace (160 words per minute, a little slower than espeak's 175) is one at which "hey jarvis"
    scores well above the wake threshold whatever the alignment of openWakeWord's 80 ms frames; at 175 some
    voices dip under it for one alignment in ten.
    """

    def make(text: str, *, voice: str = "en-us", rate: int = DEFAULT_RATE) -> Path:
        return synthesize(text, speech_dir, voice=voice, rate=rate)

    return make


@pytest.fixture
def audio_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AudioRig]:
    """A private PulseAudio server as microphone and speaker, reached through ALSA's ``pulse`` device.

    This process's environment points at it for the test (so sounddevice, used in-process, finds it) and
    PortAudio is re-initialised to see it; ``audio_rig.env`` is the environment for a daemon subprocess.
    """
    missing = missing_tools()
    if missing:
        pytest.fail(f"the audio rig needs {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils espeak-ng)")
    with running_rig(tmp_path / "rig", monkeypatch.setenv) as rig:
        yield rig
