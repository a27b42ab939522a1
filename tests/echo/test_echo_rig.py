"""Echo-safe barge-in on the rig: the assistant hears itself through the room, and must not interrupt itself.

The daemon runs as ``kioskd run`` assembles it, on the rig's ``pulse`` device, against the simulator; the
rig's echo path (:mod:`tests.echo_rig`: -6 dB, 40 ms, a reflection and room noise) feeds everything it
plays back into its microphone. Replies are asked for with ``response.create`` while nobody speaks, so any
``input_audio_buffer.speech_started`` the simulator's VAD sends is the assistant's own echo.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kioskd.daemon import Daemon
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer
from kioskd.sim.voice import ReplyVoice
from tests.conftest import Speak
from tests.e2e.harness import KEY, rig_settings
from tests.echo.harness import EchoDaemon
from tests.echo_rig import EchoPath, EchoRig, active_dbfs, scaled_speech
from tests.rig import AudioRig

pytestmark = pytest.mark.rig

SHORT_REPLIES = ["The exit is on your right.", "The cafe is upstairs."]
LONG_REPLY = "The exit is past the gift shop, on your right, and the cafe is on the first floor."
REPLIES_WITHOUT_SPEECH = 20
LEVELS_DB = (-6, -10, -14, -20) * 5  # the visitor relative to the playback: 20 barge-ins
ECHO = EchoPath(delay_ms=40, gain_db=-6.0)
MAX_SELF_INTERRUPTIONS = 0  # in REPLIES_WITHOUT_SPEECH replies


def settings(tmp_path: Path, url: str, cancellation: str) -> Any:
    return rig_settings(tmp_path / "state", url, {
        "audio": {"echo_cancellation": cancellation},
        "session": {"idle_timeout_s": 30.0},
        "budget": {"session_usd": 100.0, "daily_usd": 1000.0},
    })


async def open_session(dut: EchoDaemon, rig: AudioRig, speak: Speak) -> Daemon:
    """Wake the daemon and wait until the line is open and the pre-roll has been dealt with."""
    daemon = await dut.start()
    await asyncio.to_thread(rig.play_and_wait, speak("Hey Jarvis!"))
    await dut.wait_event("connected")
    since = daemon.counters.capture_blocks
    await dut.wait_for(lambda: daemon.counters.capture_blocks >= since + 50, "a second of audio after the wake")
    return daemon


def test_with_cancellation_the_assistant_never_interrupts_itself(audio_rig: AudioRig, speak: Speak,
                                                                 tmp_path: Path) -> None:
    """None in 20 replies. Without cancellation the very first reply interrupts itself (the last test), so
    this shows the canceller, its steady reference and the onset guard at work."""
    echo = EchoRig(audio_rig)

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=SHORT_REPLIES)) as sim:
            dut = EchoDaemon(settings(tmp_path, sim.url, "builtin"))
            assert dut.parts.echo is not None and dut.parts.echo.describe() == "builtin (webrtc)", \
                "the builtin canceller must be installed (pip install livekit)"
            echo.connect(ECHO)
            await open_session(dut, audio_rig, speak)
            session = sim.sessions[-1]
            started_before = len(session.server_events_of("input_audio_buffer.speech_started"))
            for _ in range(REPLIES_WITHOUT_SPEECH):
                await dut.reply_in_silence()
            played = sum(1 for e in dut.named("response_done") if e.fields["status"] == "completed")
            assert played >= REPLIES_WITHOUT_SPEECH
            assert dut.parts.echo.counters()["echo_processed_ms"] > 15_000
            self_interruptions = len(session.server_events_of("input_audio_buffer.speech_started")) - started_before
            assert await dut.stop() == 0
            assert self_interruptions <= MAX_SELF_INTERRUPTIONS, \
                f"{self_interruptions} self-interruptions in {played} replies"
            assert len(dut.named("barge_in")) <= self_interruptions

    try:
        asyncio.run(scenario())
    finally:
        echo.disconnect()


def test_with_cancellation_the_visitor_can_always_interrupt(audio_rig: AudioRig, speak: Speak,
                                                           tmp_path: Path) -> None:
    echo = EchoRig(audio_rig)
    playback_dbfs = active_dbfs(np.frombuffer(ReplyVoice().pcm(LONG_REPLY), dtype="<i2"), 24_000)
    visitor = speak("Sorry, where is the exit?", voice="en-gb")
    voices = {level: scaled_speech(visitor, playback_dbfs, level, tmp_path) for level in set(LEVELS_DB)}

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[LONG_REPLY])) as sim:
            dut = EchoDaemon(settings(tmp_path, sim.url, "builtin"))
            echo.connect(ECHO)
            daemon = await open_session(dut, audio_rig, speak)
            session = sim.sessions[-1]
            buffer = dut.parts.buffer
            handled: list[float] = []
            for level in LEVELS_DB:
                before = len(dut.events)
                truncates = len(session.client_events_of("conversation.item.truncate"))
                if not dut.playing():
                    await dut.ask_for_reply()
                await dut.wait_for(lambda: (item := buffer.current_item()) is not None and buffer.played_ms(item) > 500,
                                   "a reply to be playing")
                item = buffer.current_item()
                await asyncio.to_thread(audio_rig.play_and_wait, voices[level])
                try:
                    barge = await dut.wait_event("barge_in", after=before, limit_s=5)
                    def truncated(n: int = truncates) -> bool:
                        return len(session.client_events_of("conversation.item.truncate")) > n

                    await dut.wait_for(truncated, "the truncate", limit_s=5)
                except AssertionError:
                    pass
                else:
                    if barge.fields["item_id"] == item and buffer.current_item() != item:  # flushed
                        handled.append(level)
                # The visitor's turn ends and the answer to it arrives; the next trial speaks over that answer.
                await dut.wait_for(lambda: daemon.session is not None and not daemon.session.user_speaking,
                                   "the visitor's turn to end", limit_s=20)
                await dut.wait_for(lambda: daemon.session is not None and not daemon.session.response_active,
                                   "the answer to arrive", limit_s=30)
            missed = [level for level in LEVELS_DB if LEVELS_DB.count(level) > handled.count(level)]
            assert len(handled) >= 0.95 * len(LEVELS_DB), f"barge-ins missed at {missed} dB"
            assert await dut.stop() == 0

    try:
        asyncio.run(scenario())
    finally:
        echo.disconnect()


def test_without_cancellation_the_same_room_makes_the_assistant_interrupt_itself(
        audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    """The rig's echo path is real: with cancellation off, the assistant's own voice opens a turn."""
    echo = EchoRig(audio_rig)

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[LONG_REPLY])) as sim:
            dut = EchoDaemon(settings(tmp_path, sim.url, "off"))
            assert dut.parts.echo is not None and dut.parts.echo.describe() == "off"
            daemon = await dut.start()
            echo.connect(ECHO)
            await asyncio.to_thread(audio_rig.play_and_wait, speak("Hey Jarvis!"))
            await dut.wait_event("connected")
            await dut.ask_for_reply()
            await sim.wait_server_event("input_audio_buffer.speech_started", timeout_s=30)
            await dut.wait_event("barge_in", limit_s=30)
            assert daemon.counters.barge_ins >= 1
            assert await dut.stop() == 0

    try:
        asyncio.run(scenario())
    finally:
        echo.disconnect()
