"""The virtual audio rig (tests/rig.py) for a benchmark process: a private PulseAudio as mic and speaker.

The daemon then opens ALSA's ``pulse`` device through PortAudio, as on a kiosk with a USB sound card; the
figures include the real capture and playback callbacks, not a simulation of them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig import AudioRig, missing_tools, running_rig


@contextlib.contextmanager
def virtual_audio() -> Iterator[AudioRig]:
    missing = missing_tools()
    if missing:
        raise SystemExit(f"the audio rig needs {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils espeak-ng)")
    with (pytest.MonkeyPatch.context() as env, tempfile.TemporaryDirectory(prefix="kioskd-bench-rig-") as tmp,
          running_rig(Path(tmp), env.setenv) as rig):
        yield rig
