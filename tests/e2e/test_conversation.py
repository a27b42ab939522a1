"""What a visitor meets, end to end: real ALSA audio (the rig), real wake model, real WebSockets (the simulator).

Each test starts the daemon exactly as ``kioskd run`` assembles it, on the rig's ``pulse`` device, and talks to
it by playing espeak-ng speech into the rig's microphone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.wav import read_wav_mono
from kioskd.config import WakeConfig
from kioskd.daemon import State
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer
from kioskd.sim.voice import ReplyVoice
from kioskd.wake import WakeEngine
from tests.conftest import Speak
from tests.e2e.harness import KEY, DaemonUnderTest, rig_settings
from tests.rig import AudioRig

pytestmark = pytest.mark.rig

QUESTION = "what time does the museum close today"
LONG_REPLY = ("The museum closes at six o'clock this evening. The last entry is at half past five, and the cafe "
              "on the first floor stays open until the museum closes.")
SHORT_REPLY = "The exit is past the gift shop, on your right."


def speech_seconds(pcm: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds of 20 ms frames whose RMS is above ``threshold``."""
    frame = rate // 50
    frames = pcm[: len(pcm) // frame * frame].reshape(-1, frame).astype(np.float32)
    rms = np.sqrt((frames**2).mean(axis=1))
    return float(np.count_nonzero(rms > threshold)) * 0.02


def wake_score(pcm24k: np.ndarray) -> float:
    """The best hey_jarvis score openWakeWord gives this audio (24 kHz int16)."""
    import soxr

    engine = WakeEngine(WakeConfig())
    pcm16k = soxr.resample(pcm24k.astype(np.float32) / 32768, 24_000, 16_000)
    audio = (np.clip(pcm16k, -1, 1) * 32767).astype(np.int16)
    padded = np.concatenate([np.zeros(16_000, np.int16), audio, np.zeros(16_000, np.int16)])
    best = 0.0
    for i in range(0, len(padded) - 1280, 1280):
        scores = engine.model.predict(padded[i : i + 1280])
        best = max(best, *scores.values())
    return best


def test_full_conversation_then_a_second_wake(audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    one_breath = speak(f"Hey Jarvis, {QUESTION}?")
    question_alone = read_wav_mono(speak(f"{QUESTION}?"), 24_000)

    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[SHORT_REPLY])) as sim:
            dut = DaemonUnderTest(rig_settings(tmp_path / "state", sim.url))
            await dut.start()
            recording = audio_rig.record_speaker()
            try:
                await asyncio.to_thread(audio_rig.play_and_wait, one_breath)
                opened = await dut.wait_event("connected")
                closed = await dut.wait_event("session_close", limit_s=60)
                await dut.wait_state(State.LISTENING)
            finally:
                played = recording.stop()
            assert closed.fields["reason"] == "idle"
            # Closed for idleness: at least idle_timeout after the reply finished, and not much later.
            done = dut.named("response_done")[-1]
            assert closed.t - done.t >= dut.settings.session.idle_timeout_s
            assert closed.t - opened.t < 30

            session = sim.sessions[0]
            await sim.wait_for(lambda: session.ended, 10)
            assert session.close_code == 1000
            turn = np.frombuffer(session.user_turns[0], dtype="<i2")
            # The question arrived whole: as much speech as the question alone has, and no wake word in it.
            assert speech_seconds(turn.astype(np.float32) / 32768, 24_000) >= \
                speech_seconds(question_alone, 24_000) - 0.25
            assert wake_score(turn) < 0.2
            # The reply came out of the speaker.
            reply = np.frombuffer(ReplyVoice().pcm(SHORT_REPLY), dtype="<i2").astype(np.float32) / 32768
            assert speech_seconds(played, 24_000) >= 0.8 * speech_seconds(reply, 24_000)

            # A second visitor: the daemon listens again and opens a second session.
            before = len(dut.events)
            await asyncio.to_thread(audio_rig.play_and_wait, speak("Hey Jarvis!"))
            await dut.wait_event("connected", after=before)
            await dut.wait_event("session_close", after=before, limit_s=60)
            assert len(sim.sessions) == 2
            assert await dut.stop() == 0

    asyncio.run(scenario())


def test_barge_in_flushes_at_once_and_truncates_at_what_was_heard(audio_rig: AudioRig, speak: Speak,
                                                                    tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SimServer(SimOptions(api_key=KEY, replies=[LONG_REPLY, SHORT_REPLY])) as sim:
            dut = DaemonUnderTest(rig_settings(tmp_path / "state", sim.url))
            daemon = await dut.start()
            buffer = dut.parts.buffer
            pulls: list[tuple[float, bool]] = []
            loop = asyncio.get_running_loop()
            buffer.on_output = lambda block: pulls.append((loop.time(), bool(np.any(block))))
            await asyncio.to_thread(audio_rig.play_and_wait, speak(f"Hey Jarvis, {QUESTION}?"))
            # Speak over the reply once it has been playing for a while.
            await dut.wait_for(lambda: (item := buffer.current_item()) and buffer.played_ms(item) > 1200,
                               "the reply to be playing")
            await asyncio.to_thread(audio_rig.play_and_wait, speak("Sorry, where is the exit?"))
            barge = await dut.wait_event("barge_in")
            truncated = await dut.wait_event("truncated")
            await dut.wait_event("session_close", limit_s=60)

            session = sim.sessions[0]
            sent = session.client_events_of("conversation.item.truncate")
            assert len(sent) == 1
            item, played_ms = barge.fields["item_id"], barge.fields["played_ms"]
            assert sent[0]["item_id"] == item
            # Truncated at what was handed to the device (the callback thread may have handed over one more
            # block between the truncate and the flush), and the server confirmed it.
            assert 0 <= played_ms - sent[0]["audio_end_ms"] <= dut.settings.audio.block_ms
            assert truncated.fields == {"item_id": item, "audio_end_ms": sent[0]["audio_end_ms"]}
            assert 1000 < played_ms < 8000
            # Within one block of the speech_started arrival the device got only silence (no earcon then).
            block_s = dut.settings.audio.block_ms / 1000
            after = [loud for t, loud in pulls if t > barge.t + block_s + 0.005]
            assert after and not any(after[:10])
            assert daemon.counters.barge_ins == 1
            assert await dut.stop() == 0

    asyncio.run(scenario())
