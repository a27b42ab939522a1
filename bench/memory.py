"""P5: resident memory while listening, and whether it grows over 100 sessions.

Target: at most 150 MB resident while listening.

1. **Listening**: ``kioskd run`` as its own process, exactly as systemd starts it, on the virtual audio rig
   (ALSA ``pulse`` through PortAudio) with the simulator as its endpoint; once ``/readyz`` says ready, its
   VmRSS is sampled every half second for 20 s and VmHWM (the peak so far) is read; then a visitor says the
   wake word and a question three times over the rig's microphone, each conversation is answered and closed
   for idleness, and VmRSS is sampled for 10 s more of listening, with VmHWM read at the end.
2. **After 100 sessions**: the real daemon, realtime client and simulator at twenty times real time
   (:mod:`tests.reliability.fastkiosk`: synthetic microphone blocks, a fast speaker), one conversation per
   session — wake, a question, the reply played, idle close. This process's VmRSS is read after 10 warm-up
   sessions and after every further 10; the simulator's per-session records are emptied as sessions end so
   that what remains is the daemon's own footprint (plus the simulator's fixed cost).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, say, summary, table, write_results
from bench.rig import virtual_audio
from kioskd.memory import release_free_memory
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer, SimServerThread
from kioskd.sim.voice import ReplyVoice
from tests.reliability.daemonproc import DaemonProcess, free_port
from tests.reliability.fastkiosk import KEY, FastKiosk, fast_settings, rss_bytes
from tests.reliability.simrecords import shrink
from tests.rig import synthesize, wait_until

NAME = "memory"
TARGET_MB = 150.0
LISTEN_S = 20.0
AFTER_S = 10.0
CONVERSATIONS = 3
IDLE_TIMEOUT_S = 2.0
REPLY = "The exit is behind you, past the information desk."
SESSIONS = 100
WARM_UP = 10
SPEEDUP = 20.0
MB = 1024 * 1024


def vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def smaps(pid: int) -> dict[str, float]:
    """Proportional and private memory (MB) from ``/proc/<pid>/smaps_rollup``: RSS counts shared libraries
    in full, PSS shares them out, private is what this process alone holds."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Swap"):
                fields[name] = int(rest.split()[0]) / 1024
    fields["Private"] = fields.pop("Private_Clean", 0.0) + fields.pop("Private_Dirty", 0.0)
    return fields


# Where the listening footprint goes: the wake engine loaded four ways, each in a fresh interpreter. kioskd
# keeps openwakeword's verifier trainer (scikit-learn, SciPy) out, builds its onnxruntime sessions without the
# CPU memory arena and fills the feature buffer in small batches (kioskd.wake), and hands freed heap back once
# it listens (kioskd.memory); each other variant undoes one of those, to show what each saves.
KIOSKD = "kioskd"
WITH_SKLEARN = "with scikit-learn (openwakeword as packaged)"
AS_BUILT = "model built as openwakeword builds it"
NO_TRIM = "freed heap kept"
FOOTPRINT_VARIANTS = (KIOSKD, WITH_SKLEARN, AS_BUILT, NO_TRIM)
_FOOTPRINT = f"""
import contextlib, sys
def vm(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
variant = sys.argv[1]
import numpy, onnxruntime
base = vm('VmRSS')
import kioskd.wake as wake
from kioskd.memory import release_free_memory
if variant == {WITH_SKLEARN!r}:
    import openwakeword
if variant == {AS_BUILT!r}:
    wake._lean_model_build = contextlib.nullcontext
wake._openwakeword_model_class()
imported = vm('VmRSS')
from kioskd.config import WakeConfig
import numpy as np
engine = wake.WakeEngine(WakeConfig())
rng = np.random.default_rng(0)
for i in range(250):
    engine.process(rng.integers(-2000, 2000, 1280).astype(np.int16), (i + 1) * 1280)
if variant != {NO_TRIM!r}:
    release_free_memory()
print(base, imported, vm('VmRSS'), vm('VmHWM'))
"""


def wake_footprint() -> dict[str, dict[str, float]]:
    out = {}
    for variant in FOOTPRINT_VARIANTS:
        result = subprocess.run([sys.executable, "-c", _FOOTPRINT, variant], capture_output=True, text=True,
                                check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
        base, imported, loaded, peak = (float(x) for x in result.stdout.split())
        out[variant] = {"numpy_and_onnxruntime_mb": base, "openwakeword_import_mb": imported - base,
                        "models_loaded_and_run_mb": loaded - imported, "total_mb": loaded, "peak_mb": peak}
    return out


def sample_rss(pid: int, seconds: float) -> list[float]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(vm(pid, "VmRSS") / MB)
        time.sleep(0.5)  # sampling interval of an outside observer, not synchronisation
    return samples


def listening_rss(tmp: Path) -> dict[str, Any]:
    port = free_port()
    with virtual_audio() as rig, SimServerThread(SimOptions(api_key=KEY, replies=(REPLY,))) as sim:
        config = tmp / "kioskd.toml"
        config.write_text("\n".join([
            "[audio]", 'input_device = "pulse"', 'output_device = "pulse"',
            "[realtime]", f'endpoint = "{sim.url}"', f'api_key = "{KEY}"',
            "[session]", f"idle_timeout_s = {IDLE_TIMEOUT_S}",
            "[budget]", f'state_dir = "{tmp / "state"}"',
            "[health]", f"port = {port}",
        ]) + "\n")
        question = synthesize("Hey Jarvis, where is the exit?", tmp)
        daemon = DaemonProcess(config, rig.env, {}, port)
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        try:
            fresh = sample_rss(pid, LISTEN_S)
            fresh_peak = vm(pid, "VmHWM") / MB
            for n in range(1, CONVERSATIONS + 1):
                rig.play_and_wait(question)

                def ended(n: int = n) -> bool:
                    return len(sim.sessions) >= n and all(r.ended for r in sim.sessions)

                sim.wait_for(ended, 60)
                wait_until(lambda: daemon.status()["state"] == "listening", 30, "kioskd to listen again")
            after = sample_rss(pid, AFTER_S)
            peak = vm(pid, "VmHWM") / MB
            shares = smaps(pid)
            threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
            state = daemon.status()["state"]
        finally:
            status = daemon.stop()
    if status != 0:
        raise RuntimeError(f"kioskd run exited with {status}:\n{daemon.output[-3000:]}")
    return {"rss_mb": summary(fresh), "peak_before_conversations_mb": fresh_peak,
            "rss_after_conversations_mb": summary(after), "conversations": len(sim.sessions),
            "peak_vmhwm_mb": peak, "pss_mb": shares["Pss"], "private_mb": shares["Private"], "threads": threads,
            "state": state, "seconds_sampled": [LISTEN_S, AFTER_S]}


async def sessions_rss(tmp: Path) -> dict[str, Any]:
    voice = ReplyVoice()
    question = np.frombuffer(voice.pcm("Where is the exit?"), dtype="<i2")
    options = SimOptions(api_key=KEY, replies=("It is on your left.", "The cafe closes at five."), speed=50.0,
                         first_delta_delay_s=0.005, transcription_delay_s=0.01)
    series: list[tuple[int, float]] = []
    async with SimServer(options) as sim:
        settings = fast_settings(tmp / "state", sim.url, SPEEDUP, {"session": {"idle_timeout_s": 0.1}})
        async with FastKiosk(settings, speedup=SPEEDUP) as kiosk:
            for n in range(1, WARM_UP + SESSIONS + 1):
                before = len(kiosk.events)
                kiosk.wake()
                said = kiosk.say(question)
                await kiosk.wait_for(lambda b=before: kiosk.idle and kiosk.named("session_close", b),  # type: ignore[misc]
                                     "the session to close", 30)
                await said
                await sim.wait_for(lambda: all(r.ended for r in sim.sessions), 10)
                for record in sim.sessions:
                    shrink(record)
                kiosk.forget_log()
                if n >= WARM_UP and (n - WARM_UP) % 10 == 0:
                    gc.collect()
                    release_free_memory()  # as kioskd run does each time it is back to listening
                    series.append((n - WARM_UP, rss_bytes() / MB))
            closes = [str(e.fields["reason"]) for e in kiosk.named("session_close")]
            crashes = list(kiosk.crashes)
    base = series[0][1]
    return {"sessions_after_warm_up": SESSIONS, "rss_mb_by_session": series,
            "growth_mb": series[-1][1] - base, "growth_pct": (series[-1][1] / base - 1) * 100,
            "idle_closes": closes.count("idle"), "sessions": len(closes), "crashes": crashes}


def main() -> int:
    started = machine()
    with tempfile.TemporaryDirectory(prefix="kioskd-bench-") as tmp:
        say(f"kioskd run on the rig: sampling RSS for {LISTEN_S:.0f} s while listening...")
        listening = listening_rss(Path(tmp))
        say(f"{WARM_UP} + {SESSIONS} accelerated sessions...")
        sessions = asyncio.run(sessions_rss(Path(tmp)))
    say("where the wake engine's memory goes...")
    footprint = wake_footprint()
    figures = {"listening": listening, "sessions": sessions, "wake_engine_footprint": footprint,
               "target_mb": TARGET_MB,
               "meets_target": max(listening["rss_mb"]["max"], listening["rss_after_conversations_mb"]["max"])
               <= TARGET_MB}
    rss = listening["rss_mb"]
    print(table(f"P5 resident memory (target <= {TARGET_MB:.0f} MB while listening)", ["", "MB"], [
        ("kioskd run listening, RSS p50", rss["p50"]),
        ("kioskd run listening, RSS max", rss["max"]),
        ("kioskd run peak before any conversation (VmHWM)", listening["peak_before_conversations_mb"]),
        (f"listening after {CONVERSATIONS} conversations, RSS max", listening["rss_after_conversations_mb"]["max"]),
        ("kioskd run peak, conversations included (VmHWM)", listening["peak_vmhwm_mb"]),
        ("kioskd run PSS (shared libraries shared out)", listening["pss_mb"]),
        ("kioskd run private", listening["private_mb"]),
        (f"sessions: RSS after {WARM_UP} warm-up sessions", sessions["rss_mb_by_session"][0][1]),
        (f"sessions: RSS after {SESSIONS} more", sessions["rss_mb_by_session"][-1][1]),
        ("sessions: growth", sessions["growth_mb"]),
    ]))
    print(f"{sessions['idle_closes']}/{sessions['sessions']} sessions closed for idleness; "
          f"crashes: {len(sessions['crashes'])}")
    print(table("wake engine alone, fresh interpreter (MB RSS)",
                ["variant", "numpy+onnxruntime", "+ kioskd.wake, openwakeword", "+ models loaded, run", "total",
                 "peak"],
                [(k, v["numpy_and_onnxruntime_mb"], v["openwakeword_import_mb"], v["models_loaded_and_run_mb"],
                  v["total_mb"], v["peak_mb"]) for k, v in footprint.items()]))
    print(f"results: {write_results(NAME, figures, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
