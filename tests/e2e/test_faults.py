"""Things go wrong; the kiosk keeps working. Each fault ends back in ``listening``, with a clear log line.

One daemon on the rig lives through every fault in turn (the simulator's faults can change between
connections), which is also what a kiosk would see over a bad day.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from kioskd.daemon import State
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.server import SimServer
from tests.conftest import Speak
from tests.e2e.harness import KEY, DaemonUnderTest, rig_settings
from tests.rig import AudioRig

pytestmark = pytest.mark.rig

REPLY = "The information desk is on the ground floor, just past the main entrance on your left."


async def wake_and_settle(dut: DaemonUnderTest, rig: AudioRig, wake_wav: Path) -> list[str]:
    """Say the wake word; wait until the daemon is listening again; return the names of what happened."""
    assert dut.daemon is not None
    daemon = dut.daemon
    await dut.wait_for(lambda: daemon.retry_in() == 0, "the connect backoff to pass")
    before = len(dut.events)
    await asyncio.to_thread(rig.play_and_wait, wake_wav)
    await dut.wait_event("wake", after=before)
    await dut.wait_for(lambda: daemon.state is State.LISTENING and any(
        e.name == "state" and e.fields["state"] == "listening" for e in dut.events[before:]),
        "back to listening", limit_s=60)
    return [e.name for e in dut.events[before:]]


def test_every_fault_ends_back_in_listening(audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    wake = speak("Hey Jarvis!")
    question = speak("Hey Jarvis, where is the information desk?")

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[REPLY])) as sim:
            dut = DaemonUnderTest(rig_settings(tmp_path / "state", sim.url))
            daemon = await dut.start()

            # Credentials rejected at the handshake.
            sim.options.faults = Faults(handshake_status=401)
            names = await wake_and_settle(dut, audio_rig, wake)
            assert "connect_failed" in names and "connected" not in names
            assert "credentials rejected" in dut.log_text()

            # Rate limited, with Retry-After: no new attempt before it has passed.
            sim.options.faults = Faults(handshake_status=429, retry_after_s=2)
            names = await wake_and_settle(dut, audio_rig, wake)
            failed = dut.named("connect_failed")[-1]
            assert "rate limited" in failed.fields["error"] and failed.fields["backoff_s"] >= 2

            # Dropped mid-reply (no close frame).
            sim.options.faults = Faults(drop_after_events=14)
            names = await wake_and_settle(dut, audio_rig, question)
            assert dut.named("session_close")[-1].fields["reason"] == "connection_lost"
            assert "connection dropped" in dut.log_text()

            # The server closes with 1011 (server error).
            sim.options.faults = Faults(close_after_events=14, close_code=1011)
            names = await wake_and_settle(dut, audio_rig, question)
            assert dut.named("session_close")[-1].fields["reason"] == "connection_lost"
            assert "server error" in dut.log_text()

            # The session hits the service's cap: close 1001 with the reason text.
            sim.options.faults = Faults()
            sim.options.session_cap_s = 4.0  # shorter than the question and its answer
            names = await wake_and_settle(dut, audio_rig, question)
            assert dut.named("session_close")[-1].fields["reason"] in ("session_expiring", "session_expired")
            sim.options.session_cap_s = 30 * 60

            # An error event, and a frame that is not JSON: logged, and the conversation goes on.
            sim.options.faults = Faults(error_after_events=3, error_code="server_error", malformed_after_events=5)
            names = await wake_and_settle(dut, audio_rig, question)
            assert "server_error" in names and "transcript" in names
            assert dut.named("session_close")[-1].fields["reason"] == "idle"
            assert "server_error" in dut.log_text()

            assert daemon.counters.connect_failures == 2
            assert daemon.counters.sessions == 4
            assert await dut.stop() == 0

    asyncio.run(scenario())


def test_connection_refused_backs_off_and_recovers(audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        dut = DaemonUnderTest(rig_settings(tmp_path / "state", f"ws://127.0.0.1:{port}"))
        daemon = await dut.start()
        names = await wake_and_settle(dut, audio_rig, speak("Hey Jarvis!"))
        assert "connect_failed" in names
        assert "refused" in dut.named("connect_failed")[-1].fields["error"].lower()
        assert daemon.last_error is not None and daemon.state is State.LISTENING
        assert await dut.stop() == 0

    asyncio.run(scenario())


def test_daily_budget_ends_the_session_refuses_the_next_and_survives_a_restart(
        audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    state = tmp_path / "state"
    question = speak("Hey Jarvis, where is the information desk?")

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[REPLY])) as sim:
            settings = rig_settings(state, sim.url, {"budget": {"daily_usd": 0.002, "session_usd": 0}})
            dut = DaemonUnderTest(settings)
            daemon = await dut.start()
            await asyncio.to_thread(audio_rig.play_and_wait, question)
            closed = await dut.wait_event("session_close", limit_s=60)
            assert closed.fields["reason"] == "daily_budget"
            await dut.wait_state(State.BUDGET_EXHAUSTED)
            before = len(dut.events)
            await asyncio.to_thread(audio_rig.play_and_wait, speak("Hey Jarvis!"))
            refused = await dut.wait_event("refused", after=before)
            assert "budget" in refused.fields["reason"]
            assert len(sim.sessions) == 1
            spent = daemon.budget.ledger.spent_today
            assert spent >= 0.002
            assert await dut.stop() == 0

            again = DaemonUnderTest(settings)
            await again.start(until=State.BUDGET_EXHAUSTED)
            assert again.daemon is not None
            assert again.daemon.budget.ledger.spent_today == pytest.approx(spent)
            assert again.log_fields("session_refused") == []
            assert await again.stop() == 0

    asyncio.run(scenario())
