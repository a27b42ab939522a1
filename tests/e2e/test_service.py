"""``kioskd run`` as systemd runs it: sd_notify to a real datagram socket, on the rig, against the simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServerThread
from tests.conftest import Speak
from tests.e2e.harness import KEY
from tests.ops.notify_socket import NotifySocket
from tests.rig import AudioRig

pytestmark = pytest.mark.rig


def test_notify_sequence_and_watchdog_stops_on_stalled_capture(audio_rig: AudioRig, speak: Speak,
                                                                tmp_path: Path) -> None:
    config = tmp_path / "kioskd.toml"
    config.write_text(
        '[audio]\ninput_device = "pulse"\noutput_device = "pulse"\necho_cancellation = "off"\n'
        f'[budget]\nstate_dir = "{tmp_path / "state"}"\n'
        "[health]\nport = 0\n[session]\nidle_timeout_s = 2.0\n"
    )
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    with SimServerThread(SimOptions(api_key=KEY)) as sim:
        env = {**audio_rig.env, "NOTIFY_SOCKET": notify.env, "WATCHDOG_USEC": "1000000",
               "AZURE_OPENAI_ENDPOINT": sim.url, "AZURE_OPENAI_API_KEY": KEY, "PYTHONFAULTHANDLER": "1"}
        env.pop("JOURNAL_STREAM", None)
        proc = subprocess.Popen([sys.executable, "-m", "kioskd", "run", "--config", str(config)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            notify.wait_for(lambda d: "EXTEND_TIMEOUT_USEC=" in d.text, 60)
            ready = notify.wait_for(lambda d: "READY=1" in d.assignments, 90)
            assert ready.pid == proc.pid  # NotifyAccess=main holds
            assert any(a.startswith("STATUS=listening") for a in ready.assignments)
            notify.wait_for(lambda d: d.text == "WATCHDOG=1", 5)
            notify.wait_for(lambda d: d.text == "WATCHDOG=1", 5)

            # A visitor: STATUS follows the state machine.
            audio_rig.play_and_wait(speak("Hey Jarvis!"))
            notify.wait_for(lambda d: d.text.startswith("STATUS=conversing"), 30)
            notify.wait_for(lambda d: d.text.startswith("STATUS=listening"), 30)

            # The capture stalls (the sound server freezes: no audio, no error): the pings stop.
            assert audio_rig.pid is not None
            os.kill(audio_rig.pid, signal.SIGSTOP)
            try:
                notify.wait_for(lambda d: d.text.startswith("STATUS=degraded"), 15)
                quiet = notify.collect(2.5)
            finally:
                os.kill(audio_rig.pid, signal.SIGCONT)
            assert "WATCHDOG=1" not in [d.text for d in quiet]
            notify.wait_for(lambda d: d.text == "WATCHDOG=1", 60)

            proc.send_signal(signal.SIGTERM)
            notify.wait_for(lambda d: "STOPPING=1" in d.assignments, 10)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            notify.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    start_up = err.split("ready: listening", 1)[0]
    assert " ERROR " not in start_up, start_up  # a clean start logs no error
    assert KEY not in out + err
