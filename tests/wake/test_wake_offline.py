"""The wake detector on recorded speech, through the same worker-thread path as the live microphone.

These run faster than real time (``scan_clip`` feeds the detector as fast as it consumes), which is what
keeps a minute of negative material affordable in the suite.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from kioskd.audio.dsp import WAKE_RATE, to_int16
from kioskd.config import AudioConfig, WakeConfig
from kioskd.wake import WakeDetector, WakeEngine, WakeEvent, WakeModelError, builtin_models, resolve_models, scan_clip
from tests.audio.signals import OTHER_SENTENCES, load_mono, speech_end
from tests.conftest import Speak

SENTENCES = OTHER_SENTENCES[:10]
AUDIO = AudioConfig()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * WAKE_RATE), dtype=np.float32)


def speech(speak: Speak, text: str, voice: str = "en-gb", gain: float = 0.6) -> np.ndarray:
    return load_mono(speak(text, voice=voice), WAKE_RATE) * np.float32(gain)


async def scan(signal: np.ndarray, cfg: WakeConfig | None = None) -> list[WakeEvent]:
    return await scan_clip(to_int16(signal), WAKE_RATE, cfg or WakeConfig(), AUDIO)


@pytest.mark.asyncio
async def test_a_minute_of_other_speech_and_noise_never_wakes(speak: Speak) -> None:
    rng = np.random.default_rng(7)
    parts = []
    for i, text in enumerate(SENTENCES):
        for voice in ("en-us", "en-gb-scotland") if i % 2 else ("en-gb", "en-us-nyc"):
            parts += [speech(speak, text, voice), silence(0.3)]
    white = rng.normal(0, 0.03, int(4 * WAKE_RATE)).astype(np.float32)  # about -30 dBFS
    brown = np.cumsum(rng.normal(0, 0.01, int(4 * WAKE_RATE))).astype(np.float32)
    brown = (brown - np.convolve(brown, np.ones(400) / 400, mode="same")) * np.float32(0.5)
    t = np.arange(int(3 * WAKE_RATE)) / WAKE_RATE
    hum = (0.05 * np.sin(2 * np.pi * 50 * t) + 0.02 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    one, other = speech(speak, SENTENCES[6], "en-us"), speech(speak, SENTENCES[2], "en-gb")
    n = min(len(one), len(other))
    babble = one[:n] + other[:n] + rng.normal(0, 0.01, n).astype(np.float32)  # two voices over noise
    signal = np.concatenate([*parts, white, brown, hum, babble])
    assert len(signal) / WAKE_RATE >= 60.0
    events = await scan(signal)
    assert events == []


@pytest.mark.asyncio
async def test_wake_word_position_and_score_from_a_recording(speak: Speak) -> None:
    phrase = speech(speak, "hey jarvis", "en-gb")
    signal = np.concatenate([silence(1.0), phrase, silence(1.5)])
    events = await scan(signal)
    assert [e.model for e in events] == ["hey_jarvis"]
    true_end = WAKE_RATE + speech_end(phrase)
    assert abs(events[0].end16k - true_end) <= 0.1 * WAKE_RATE


@pytest.mark.asyncio
async def test_the_silence_gate_saves_inference_without_missing_a_word_after_silence(speak: Speak) -> None:
    phrase = speech(speak, "hey jarvis", "en-us-nyc")
    signal = np.concatenate([silence(6.0), phrase, silence(4.0)])
    gated = WakeEngine(WakeConfig(silence_gate_dbfs=-60.0))
    ungated = WakeEngine(WakeConfig(silence_gate_dbfs=None))
    pcm = to_int16(signal)
    results = []
    for engine in (gated, ungated):
        events = []
        for i in range(0, len(pcm), 320):
            events += engine.process(pcm[i : i + 320], i + len(pcm[i : i + 320]))
        results.append(events)
    assert [e.model for e in results[0]] == [e.model for e in results[1]] == ["hey_jarvis"]
    assert results[0][0].end16k == results[1][0].end16k
    assert results[0][0].score == pytest.approx(results[1][0].score, abs=1e-4)
    # Most of the ten seconds of silence was never run through the model.
    assert gated.skipped > 50 and gated.inferences < ungated.inferences - 50
    assert ungated.skipped == 0


@pytest.mark.asyncio
async def test_one_utterance_wakes_once_because_of_the_refractory_period(speak: Speak) -> None:
    phrase = speech(speak, "hey jarvis", "en-gb")
    signal = np.concatenate([silence(1.0), phrase, silence(2.0)])
    assert len(await scan(signal, WakeConfig(refractory_s=2.0))) == 1
    # Without it the same utterance scores above the threshold on several consecutive frames.
    assert len(await scan(signal, WakeConfig(refractory_s=0.0))) > 1
    # Two utterances further apart than the refractory period wake twice.
    twice = np.concatenate([signal, phrase, silence(2.0)])
    assert len(await scan(twice, WakeConfig(refractory_s=2.0))) == 2


@pytest.mark.asyncio
async def test_several_models_at_once_each_named(speak: Speak) -> None:
    signal = np.concatenate([
        silence(1.0), speech(speak, "alexa", "en-us"), silence(2.5), speech(speak, "hey jarvis", "en-gb"), silence(2.0)
    ])
    events = await scan(signal, WakeConfig(models=["hey_jarvis", "alexa"]))
    assert [e.model for e in events] == ["alexa", "hey_jarvis"]


@pytest.mark.asyncio
async def test_a_custom_onnx_model_by_path(speak: Speak, tmp_path: Path) -> None:
    custom = tmp_path / "kiosk_word.onnx"
    shutil.copy(builtin_models()["hey_jarvis"], custom)
    signal = np.concatenate([silence(1.0), speech(speak, "hey jarvis", "en-gb"), silence(1.5)])
    events = await scan(signal, WakeConfig(models=[str(custom)]))
    assert [e.model for e in events] == ["kiosk_word"]


@pytest.mark.asyncio
async def test_the_vad_gate_is_applied(speak: Speak) -> None:
    signal = np.concatenate([silence(1.0), speech(speak, "hey jarvis", "en-gb"), silence(1.5)])
    assert len(await scan(signal, WakeConfig(vad_threshold=0.2))) == 1
    # A gate no speech can pass: the same words no longer wake.
    assert await scan(signal, WakeConfig(vad_threshold=0.999)) == []


def test_reset_forgets_the_audio_before_it_and_rearms_at_once(speak: Speak) -> None:
    """After a session the daemon resets the detector: the wake word that opened it must not fire again."""
    engine = WakeEngine(WakeConfig(silence_gate_dbfs=None))
    # (With this voice, openWakeWord's own Model.reset() is not enough: its feature buffers still hold the
    # phrase, and it fires again 0.5 s after the reset.)
    phrase = speech(speak, "hey jarvis", "en-us")
    pcm = to_int16(np.concatenate([silence(1.0), phrase]))
    position = 0
    events: list[WakeEvent] = []
    for offset in range(0, len(pcm) + 16000, 320):  # feed until the wake, as the daemon does
        block = pcm[offset : offset + 320]
        if len(block) < 320:
            block = np.zeros(320, dtype=np.int16)
        position += 320
        events += engine.process(block, position)
        if events:
            break
    assert len(events) == 1
    engine.reset()
    quiet = to_int16(np.random.default_rng(3).normal(0, 0.002, 3 * WAKE_RATE).astype(np.float32))
    later = []
    for i in range(0, len(quiet), 320):
        position += 320
        later += engine.process(quiet[i : i + 320], position)
    assert later == []
    # And the refractory period is over: the visitor can wake it again straight away.
    again = to_int16(np.concatenate([phrase, silence(1.0)]))
    for i in range(0, len(again), 320):
        position += 320
        later += engine.process(again[i : i + 320], position)
    assert [e.model for e in later] == ["hey_jarvis"]


def test_model_names_and_paths_are_checked_with_clear_messages(tmp_path: Path) -> None:
    assert {"hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy"} <= set(builtin_models())
    assert all(path.suffix == ".onnx" and path.is_file() for path in builtin_models().values())
    with pytest.raises(WakeModelError, match=r"unknown wake model 'hey_computer'.*hey_jarvis"):
        resolve_models(["hey_computer"])
    with pytest.raises(WakeModelError, match="no such file"):
        resolve_models([str(tmp_path / "missing.onnx")])
    with pytest.raises(WakeModelError, match=r"only \.onnx"):
        resolve_models([str(tmp_path / "model.tflite")])
    with pytest.raises(WakeModelError, match="configured twice"):
        resolve_models(["hey_jarvis", "hey_jarvis"])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    with pytest.raises(WakeModelError, match="cannot load wake model"):
        WakeEngine(WakeConfig(models=[str(broken)]))


@pytest.mark.asyncio
async def test_inference_runs_off_the_loop_and_a_backlog_drops_instead_of_blocking(speak: Speak) -> None:
    loop_thread = threading.current_thread()
    seen_on: list[threading.Thread] = []
    events: list[WakeEvent] = []

    def on_wake(event: WakeEvent) -> None:
        seen_on.append(threading.current_thread())
        events.append(event)

    detector = await WakeDetector.create(WakeConfig(), on_wake, max_backlog_s=0.5)
    try:
        assert detector.loaded and detector.model_names == ["hey_jarvis"]
        pcm = to_int16(np.concatenate([silence(1.0), speech(speak, "hey jarvis", "en-gb"), silence(1.5)]))
        for i in range(0, len(pcm), 320):
            detector.feed(pcm[i : i + 320], i + 320)
            if i % 3200 == 0:
                await detector.drain()
        await detector.drain()
        assert len(events) == 1 and seen_on == [loop_thread]
        # Ten seconds at once is more than the worker may fall behind: the excess is dropped, not queued.
        accepted = [detector.feed(np.zeros(320, dtype=np.int16), len(pcm) + i * 320) for i in range(500)]
        assert not all(accepted)
        assert detector.stats.drops == accepted.count(False)
        await asyncio.wait_for(detector.drain(), 30)
    finally:
        detector.close()
    assert not detector.loaded


_LEAN_LOAD = """
import asyncio, sys
import onnxruntime
from kioskd.audio.dsp import to_int16
from kioskd.audio.wav import read_wav
from kioskd.config import AudioConfig, WakeConfig
from kioskd.wake import scan_clip
original = onnxruntime.SessionOptions
clip = read_wav(sys.argv[1])
events = asyncio.run(scan_clip(to_int16(clip.frames), clip.rate, WakeConfig(), AudioConfig()))
print(len(events), "sklearn" in sys.modules, onnxruntime.SessionOptions is original)
import openwakeword
try:
    openwakeword.train_custom_verifier()
except TypeError:
    print("trainer", "sklearn" in sys.modules)
"""


def test_the_wake_engine_loads_without_the_verifier_trainer_and_still_detects(speak: Speak) -> None:
    """scikit-learn (openwakeword's trainer, ~95 MB) stays out of a detecting process, onnxruntime is left as
    it was found, and asking for the trainer still reaches the real one."""
    import subprocess
    import sys

    clip = speak("Hey Jarvis, where is the exit?")
    run = subprocess.run([sys.executable, "-c", _LEAN_LOAD, str(clip)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "False", "True", "trainer", "True"], run.stdout


def test_the_lean_engine_scores_every_frame_as_openwakeword_itself_does(speak: Speak) -> None:
    """kioskd builds openWakeWord leaner (no memory arena, the feature buffer filled a few windows at a time,
    one second of raw audio kept instead of ten); the scores it acts on are openWakeWord's own, frame by
    frame, over 15 s of speech with the wake word in the middle."""
    from kioskd.wake import _openwakeword_model_class, resolve_models

    words = [speech(speak, text, "en-us") for text in SENTENCES[:4]]
    clip = to_int16(np.concatenate([*words[:2], speech(speak, "Hey Jarvis, where is the exit?", "en-us"),
                                    *words[2:], silence(1.0)]))
    assert len(clip) / WAKE_RATE >= 15.0
    engine = WakeEngine(WakeConfig(silence_gate_dbfs=None))
    plain = _openwakeword_model_class()(wakeword_models=[str(path) for _, path in resolve_models(["hey_jarvis"])],
                                        inference_framework="onnx", ncpu=1)
    # Both start from their own noise; after 2 s (longer than the model's 1.28 s of context) only the audio counts.
    settled = 2 * WAKE_RATE // 1280
    ours, theirs = [], []
    for i in range(0, len(clip) - 1279, 1280):
        frame = clip[i : i + 1280]
        ours.append(float(engine.model.predict(frame)["hey_jarvis_v0.1"]))
        theirs.append(float(plain.predict(frame)["hey_jarvis_v0.1"]))
    np.testing.assert_allclose(ours[settled:], theirs[settled:], atol=1e-4)
    assert max(theirs) >= WakeConfig().threshold  # the clip does wake: the comparison covers a detection
