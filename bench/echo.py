"""Echo cancellation: how much echo the builtin canceller removes (ERLE) and what it costs.

    .venv/bin/python -m bench.echo [--replies 6]

Three measurements, printed as a table and written to ``bench/results/echo.json``:

* ``synthetic``: espeak speech through a numpy room (40 ms, -6 dB, a reflection, -65 dBFS noise), through
  :class:`kioskd.audio.echo.UplinkEcho` block by block as the daemon feeds it;
* ``rig``: the real daemon on the PulseAudio rig with the rig's echo path (``tests/echo_rig.py``, -6 dB,
  40 ms), asked for replies with nobody speaking; the microphone blocks before and after the canceller and
  every reference block are recorded with their times;
* ``rig replayed offline``: those recorded signals replayed through a fresh canceller in the same order and
  with the same times (the canceller is deterministic, so this checks the recording and isolates the
  canceller from the machine's load).

ERLE is 10·log10 of the echo's power over the residual's, over the 10 ms frames where the echo is above
-40 dBFS, after the wake word. CPU is the canceller stage's own thread CPU time per second of audio it
processed. The delay is what the canceller must bridge: from a reference block being handed to the output
device to its echo reaching the loop in a microphone block (cross-correlation of the two timelines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kioskd.audio.dsp import resample
from kioskd.audio.echo import FRAME, ReferenceTap, UplinkEcho, WebRtcCanceller

RATE = 24_000
RESULTS = Path(__file__).resolve().parent / "results" / "echo.json"
REPLIES = ["The exit is past the gift shop, on your right.", "The cafe is on the first floor, next to the lifts."]


def erle_db(mic: np.ndarray, out: np.ndarray, skip_s: float = 0.0) -> float:
    n = min(len(mic), len(out)) // FRAME * FRAME
    a = mic[:n].astype(np.float64).reshape(-1, FRAME) / 32768
    b = out[:n].astype(np.float64).reshape(-1, FRAME) / 32768
    level = 10 * np.log10(np.mean(a * a, axis=1) + 1e-20)
    keep = level > -40
    keep[: int(skip_s * 100)] = False
    return float(10 * np.log10(np.sum(a[keep] ** 2) / max(np.sum(b[keep] ** 2), 1e-20)))


def loudest_residual_dbfs(out: np.ndarray, skip_s: float) -> float:
    n = len(out) // FRAME * FRAME
    x = out[:n].astype(np.float64).reshape(-1, FRAME)[int(skip_s * 100):] / 32768
    return float(10 * np.log10(np.max(np.mean(x * x, axis=1)) + 1e-20))


def replay(records: dict[str, Any]) -> tuple[np.ndarray, float]:
    """Feed recorded reference pushes and microphone blocks, in time order, through a fresh canceller."""
    now = [0.0]
    echo = UplinkEcho(ReferenceTap(clock=lambda: now[0]), canceller=WebRtcCanceller(), clock=lambda: now[0])
    events = [(t, 0, i) for i, t in enumerate(records["ref_t"])] + [(t, 1, i) for i, t in enumerate(records["mic_t"])]
    events.sort()
    out = []
    cpu = 0.0
    for t, kind, i in events:
        now[0] = t
        if kind == 0:
            echo.tap.push(records["ref"][i], records["ref_rate"])
        else:
            start = time.thread_time()
            out.append(echo.process(records["mic"][i]))
            cpu += time.thread_time() - start
    return np.concatenate(out), cpu / max(echo.stats.processed_ms / 1000, 1e-9)


def synthetic() -> dict[str, Any]:
    from tests.echo.test_echo_unit import room, run, to_i16
    from tests.echo_rig import read_mono
    from tests.rig import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        pcm, rate = read_mono(synthesize(" ".join(REPLIES * 3), Path(tmp)))
    far = resample(pcm, rate, RATE).astype(np.float64)
    mic = room(far)
    echo = UplinkEcho(ReferenceTap(), canceller=WebRtcCanceller())
    start = time.process_time()
    out = run(echo, far, mic)
    cpu = time.process_time() - start
    mic16 = to_i16(mic[: len(out)])
    return {"erle_db": round(erle_db(mic16, to_i16(out)), 1), "audio_s": round(len(out) / RATE, 1),
            "cpu_s_per_audio_s": round(cpu / (len(out) / RATE), 4),
            "loudest_residual_dbfs": round(loudest_residual_dbfs(to_i16(out), 0.0), 1)}


def delay_ms(records: dict[str, Any]) -> float:
    """Reference handed to the device → its echo in a microphone block on the loop."""
    mic = np.concatenate(records["mic"]).astype(np.float64)
    ref = resample(np.concatenate(records["ref"]).astype(np.float32), records["ref_rate"], RATE).astype(np.float64)
    mic_end = np.cumsum([len(b) for b in records["mic"]])
    ref_start = (np.cumsum([len(b) for b in records["ref"]]) - len(records["ref"][0])) * RATE / records["ref_rate"]
    pc = np.polyfit(mic_end, records["mic_t"], 1)
    pr = np.polyfit(ref_start, records["ref_t"], 1)
    t0 = max(pc[1], pr[1]) + 3.0
    t1 = min(np.polyval(pc, len(mic)), np.polyval(pr, len(ref))) - 0.5
    grid = np.arange(float(t0), float(t1), 1 / RATE)
    a = ref[np.clip(((grid - pr[1]) / pr[0]).astype(int), 0, len(ref) - 1)]
    b = mic[np.clip(((grid - pc[1]) / pc[0]).astype(int), 0, len(mic) - 1)]
    n = len(a)
    cc = np.fft.irfft(np.fft.rfft(b, 2 * n) * np.conj(np.fft.rfft(a, 2 * n)))[: RATE // 2]
    return float(np.argmax(np.abs(cc)) * 1000 / RATE)


async def on_rig(replies: int, root: Path) -> dict[str, Any]:
    from kioskd.audio.devices import rescan
    from kioskd.sim.options import SimOptions
    from kioskd.sim.server import SimServer
    from tests.e2e.harness import KEY, rig_settings
    from tests.echo.harness import EchoDaemon
    from tests.echo_rig import EchoPath, EchoRig
    from tests.rig import AudioRig, synthesize

    rig = AudioRig(root / "rig")
    for key in ("XDG_RUNTIME_DIR", "PULSE_SERVER", "PULSE_SOURCE", "PULSE_SINK"):
        os.environ[key] = rig.env[key]
    rig.start()
    rescan()
    path = EchoRig(rig)
    records: dict[str, Any] = {"mic": [], "out": [], "mic_t": [], "ref": [], "ref_t": [], "cpu": 0.0}
    try:
        async with SimServer(SimOptions(api_key=KEY, replies=REPLIES)) as sim:
            dut = EchoDaemon(rig_settings(root / "state", sim.url, {
                "audio": {"echo_cancellation": "builtin"}, "session": {"idle_timeout_s": 30.0}}))
            echo = dut.parts.echo
            assert echo is not None and echo.describe() == "builtin (webrtc)", "pip install livekit"
            process, push = echo.process, echo.tap.push

            def recording_process(pcm: np.ndarray) -> np.ndarray:
                records["mic_t"].append(time.monotonic())
                start = time.thread_time()
                out = process(pcm)
                records["cpu"] += time.thread_time() - start
                records["mic"].append(pcm.copy())
                records["out"].append(out.copy())
                return out

            def recording_push(pcm: np.ndarray, rate: int) -> None:
                records["ref"].append(np.array(pcm))
                records["ref_t"].append(time.monotonic())
                records["ref_rate"] = rate
                push(pcm, rate)

            echo.process = recording_process  # type: ignore[method-assign, assignment]
            echo.tap.push = recording_push  # type: ignore[method-assign]
            await dut.start()
            path.connect(EchoPath())
            await asyncio.to_thread(rig.play_and_wait, synthesize("Hey Jarvis!", root))
            await dut.wait_event("connected")
            wake_s = sum(len(b) for b in records["mic"]) / RATE
            for _ in range(replies):
                await dut.reply_in_silence()
            started = len(sim.sessions[-1].server_events_of("input_audio_buffer.speech_started"))
            processed_s = echo.stats.processed_ms / 1000
            await dut.stop()
    finally:
        path.disconnect()
        rig.stop()
    mic, out = np.concatenate(records["mic"]), np.concatenate(records["out"])
    skip = wake_s + 0.5
    replayed, replay_cpu = replay(records)
    return {
        "replies": replies, "speech_started_on_echo": started, "delay_ms": round(delay_ms(records), 1),
        "erle_db": round(erle_db(mic, out, skip), 1),
        "loudest_residual_dbfs": round(loudest_residual_dbfs(out, skip), 1),
        "cpu_s_per_audio_s": round(records["cpu"] / max(processed_s, 1e-9), 4), "processed_s": round(processed_s, 1),
        "replayed_erle_db": round(erle_db(mic, replayed, skip), 1),
        "replayed_loudest_residual_dbfs": round(loudest_residual_dbfs(replayed, skip), 1),
        "replayed_cpu_s_per_audio_s": round(replay_cpu, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=6)
    args = parser.parse_args()
    synth = synthetic()
    with tempfile.TemporaryDirectory() as tmp:
        rig = asyncio.run(on_rig(args.replies, Path(tmp)))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    result = {"canceller": "webrtc (livekit.rtc.AudioProcessingModule: AEC3 + high-pass)", "machine": machine,
              "synthetic": synth, "rig": rig}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measurement':<28}{'ERLE dB':>9}{'loudest residual dBFS':>24}{'CPU s/audio s':>15}")
    print(f"{'synthetic (numpy room)':<28}{synth['erle_db']:>9}{synth['loudest_residual_dbfs']:>24}"
          f"{synth['cpu_s_per_audio_s']:>15}")
    print(f"{'rig (daemon, live)':<28}{rig['erle_db']:>9}{rig['loudest_residual_dbfs']:>24}"
          f"{rig['cpu_s_per_audio_s']:>15}")
    print(f"{'rig replayed offline':<28}{rig['replayed_erle_db']:>9}{rig['replayed_loudest_residual_dbfs']:>24}"
          f"{rig['replayed_cpu_s_per_audio_s']:>15}")
    print(f"rig: {rig['replies']} replies, {rig['speech_started_on_echo']} speech_started on echo alone, "
          f"reference->microphone delay {rig['delay_ms']} ms; machine {machine}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
