"""The operator's view of a running daemon: health endpoint answers, and a lost microphone shows."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kioskd.daemon import State
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer
from tests.conftest import Speak
from tests.e2e.harness import KEY, DaemonUnderTest, rig_settings
from tests.rig import AudioRig

pytestmark = pytest.mark.rig


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return status, json.loads(body) if body.startswith(b"{") else body.decode()


def test_mic_loss_degrades_readiness_and_recovers_without_restart(audio_rig: AudioRig, speak: Speak,
                                                                  tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY)) as sim:
            dut = DaemonUnderTest(rig_settings(tmp_path / "state", sim.url))
            daemon = await dut.start()
            assert dut.health_url is not None and dut.health_url.startswith("http://127.0.0.1:")
            base = dut.health_url

            async def fetch(path: str) -> tuple[int, Any]:
                return await asyncio.to_thread(get, base + path)

            status, ready = await fetch("/readyz")
            assert status == 200 and all(c["ok"] for c in ready["checks"].values())
            status, body = await fetch("/status")
            assert status == 200 and body["state"] == "listening"
            assert KEY not in json.dumps(body)
            status, metrics = await fetch("/metrics")
            assert status == 200 and "kioskd_ready 1.0" in metrics and KEY not in metrics

            await asyncio.to_thread(audio_rig.unplug_mic)
            await dut.wait_state(State.DEGRADED, limit_s=30)
            status, ready = await fetch("/readyz")
            assert status == 503 and not ready["checks"]["audio_input"]["ok"]
            assert (await fetch("/healthz"))[0] == 200  # alive, just not ready
            assert "microphone" in dut.log_text()

            await asyncio.to_thread(audio_rig.replug_mic)
            await dut.wait_state(State.LISTENING, limit_s=60)
            status, ready = await fetch("/readyz")
            assert status == 200, ready
            # ... and it still hears the wake word.
            before = len(dut.events)
            await asyncio.to_thread(audio_rig.play_and_wait, speak("Hey Jarvis!"))
            await dut.wait_event("connected", after=before)
            assert daemon.counters.wakes == 1
            assert await dut.stop() == 0

    asyncio.run(scenario())
