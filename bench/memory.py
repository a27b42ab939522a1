"""P5: resident memory while listening, and whether it grows over 100 sessions.

Target: at most 150 MB resident while listening.

1. **Listening**: ``kioskd run`` as its own process, exactly as systemd starts it, on the virtual audio rig
   (ALSA ``pulse`` through PortAudio) with the simulator as its endpoint; once ``/readyz`` says ready, its
   VmRSS is sampled every half second for 20 s, and VmHWM (the peak) is read at the end.
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
from kioskd.sim.options import SimOptions
from kioskd.sim.server import SimServer, SimServerThread
from kioskd.sim.voice import ReplyVoice
from tests.reliability.daemonproc import DaemonProcess, free_port
from tests.reliability.fastkiosk import KEY, FastKiosk, fast_settings, rss_bytes
from tests.reliability.simrecords import shrink

NAME = "memory"
TARGET_MB = 150.0
LISTEN_S = 20.0
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


# Where the listening footprint goes: the wake engine loaded three ways, each in a fresh interpreter. kioskd
# keeps openwakeword's verifier trainer (scikit-learn, SciPy) out and builds its onnxruntime sessions without
# the CPU memory arena (kioskd.wake); the other two variants put one of those back, to show what each saves.
_FOOTPRINT = """
import contextlib, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
variant = sys.argv[1]
import numpy, onnxruntime
base = rss()
import kioskd.wake as wake
if variant == "with scikit-learn (openwakeword as packaged)":
    import openwakeword
if variant == "with onnxruntime's memory arena":
    wake._sessions_without_memory_arena = contextlib.nullcontext
wake._openwakeword_model_class()
imported = rss()
from kioskd.config import WakeConfig
import numpy as np
engine = wake.WakeEngine(WakeConfig())
rng = np.random.default_rng(0)
for i in range(250):
    engine.process(rng.integers(-2000, 2000, 1280).astype(np.int16), (i + 1) * 1280)
print(base, imported, rss())
"""
FOOTPRINT_VARIANTS = ("kioskd", "with scikit-learn (openwakeword as packaged)", "with onnxruntime's memory arena")


def wake_footprint() -> dict[str, dict[str, float]]:
    out = {}
    for variant in FOOTPRINT_VARIANTS:
        result = subprocess.run([sys.executable, "-c", _FOOTPRINT, variant], capture_output=True, text=True,
                                check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
        base, imported, loaded = (float(x) for x in result.stdout.split())
        out[variant] = {"numpy_and_onnxruntime_mb": base, "openwakeword_import_mb": imported - base,
                        "models_loaded_and_run_mb": loaded - imported, "total_mb": loaded}
    return out


def listening_rss(tmp: Path) -> dict[str, Any]:
    port = free_port()
    with virtual_audio() as rig, SimServerThread(SimOptions(api_key=KEY)) as sim:
        config = tmp / "kioskd.toml"
        config.write_text("\n".join([
            "[audio]", 'input_device = "pulse"', 'output_device = "pulse"',
            "[realtime]", f'endpoint = "{sim.url}"', f'api_key = "{KEY}"',
            "[budget]", f'state_dir = "{tmp / "state"}"',
            "[health]", f"port = {port}",
        ]) + "\n")
        daemon = DaemonProcess(config, rig.env, {}, port)
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        samples = []
        try:
            end = time.monotonic() + LISTEN_S
            while time.monotonic() < end:
                samples.append(vm(pid, "VmRSS") / MB)
                time.sleep(0.5)  # sampling interval of an outside observer, not synchronisation
            peak = vm(pid, "VmHWM") / MB
            shares = smaps(pid)
            threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
            state = daemon.status()["state"]
        finally:
            status = daemon.stop()
    if status != 0:
        raise RuntimeError(f"kioskd run exited with {status}:\n{daemon.output[-3000:]}")
    return {"rss_mb": summary(samples), "peak_vmhwm_mb": peak, "pss_mb": shares["Pss"],
            "private_mb": shares["Private"], "threads": threads, "state": state, "seconds_sampled": LISTEN_S}


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
               "meets_target": listening["peak_vmhwm_mb"] <= TARGET_MB}
    rss = listening["rss_mb"]
    print(table(f"P5 resident memory (target <= {TARGET_MB:.0f} MB while listening)", ["", "MB"], [
        ("kioskd run listening, RSS p50", rss["p50"]),
        ("kioskd run listening, RSS max", rss["max"]),
        ("kioskd run peak (VmHWM)", listening["peak_vmhwm_mb"]),
        ("kioskd run PSS (shared libraries shared out)", listening["pss_mb"]),
        ("kioskd run private", listening["private_mb"]),
        (f"sessions: RSS after {WARM_UP} warm-up sessions", sessions["rss_mb_by_session"][0][1]),
        (f"sessions: RSS after {SESSIONS} more", sessions["rss_mb_by_session"][-1][1]),
        ("sessions: growth", sessions["growth_mb"]),
    ]))
    print(f"{sessions['idle_closes']}/{sessions['sessions']} sessions closed for idleness; "
          f"crashes: {len(sessions['crashes'])}")
    print(table("wake engine alone, fresh interpreter (MB RSS)",
                ["variant", "numpy+onnxruntime", "+ kioskd.wake, openwakeword", "+ models loaded, run", "total"],
                [(k, v["numpy_and_onnxruntime_mb"], v["openwakeword_import_mb"], v["models_loaded_and_run_mb"],
                  v["total_mb"]) for k, v in footprint.items()]))
    print(f"results: {write_results(NAME, figures, started)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
