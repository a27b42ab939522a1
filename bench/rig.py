"""The virtual audio rig (tests/rig.py) for a benchmark process: a private PulseAudio as mic and speaker.

The daemon then opens ALSA's ``pulse`` device through PortAudio, as on a kiosk with a USB sound card; the
figures include the real capture and playback callbacks, not a simulation of them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kioskd.audio.devices import rescan
from tests.rig import AudioRig, missing_tools

_ENV = ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_SOURCE", "PULSE_SINK")


@contextlib.contextmanager
def virtual_audio() -> Iterator[AudioRig]:
    missing = missing_tools()
    if missing:
        raise SystemExit(f"the audio rig needs {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils espeak-ng)")
    saved = {key: os.environ.get(key) for key in _ENV}
    with tempfile.TemporaryDirectory(prefix="kioskd-bench-rig-") as tmp:
        rig = AudioRig(Path(tmp), set_env=os.environ.__setitem__)
        for key in _ENV:
            os.environ[key] = rig.env[key]
        rig.start()
        rescan()
        try:
            yield rig
        finally:
            rig.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            rescan()
