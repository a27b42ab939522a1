"""Capture and playback in a process that may not create executable memory, as under systemd's
``MemoryDenyWriteExecute=yes`` (here by the kernel's PR_SET_MDWE, which refuses the same mappings).

Run by ``test_hardened_process.py`` with the rig's environment: ``python -m tests.audio.mdwe_probe BEEP.wav``.
Prints one JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def forbid_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")


def callbacks_possible() -> bool:
    import cffi

    try:
        cffi.FFI().callback("int(int)", lambda x: x)
    except MemoryError:
        return False
    return True


async def run(beep: str) -> dict[str, object]:
    import numpy as np

    from kioskd.audio.capture import Capture, CaptureBlock
    from kioskd.audio.dsp import REALTIME_RATE
    from kioskd.audio.playback import JitterBuffer, Playback
    from kioskd.config import AudioConfig
    from tests.audio.signals import wait_until

    cfg = AudioConfig(input_device="pulse", output_device="pulse", jitter_target_ms=0)
    loop = asyncio.get_running_loop()
    blocks: list[CaptureBlock] = []
    states: list[tuple[str, bool]] = []
    capture = Capture(cfg, blocks.append, lambda up, _why: states.append(("input", up)), loop=loop)
    buffer = JitterBuffer(cfg)
    playback = Playback(cfg, buffer, lambda up, _why: states.append(("output", up)), loop=loop)
    task = loop.create_task(capture.run())
    playback.start()
    await wait_until(lambda: len({kind for kind, up in states if up}) == 2, 30, "microphone and speaker")
    since = len(blocks)
    await asyncio.to_thread(subprocess.run, ["paplay", "-d", "rig_mic_in", beep], check=True)
    t = np.arange(REALTIME_RATE // 2) / REALTIME_RATE
    buffer.enqueue("reply", (8000 * np.sin(2 * np.pi * 700 * t)).astype(np.int16))
    buffer.end_item("reply")
    await wait_until(lambda: buffer.current_item() is None and len(blocks) >= since + 25, 30, "the reply")
    heard = np.concatenate([b.pcm24k for b in blocks[since:]]) if len(blocks) > since else np.zeros(1)
    result = {
        "callbacks_possible": callbacks_possible(),
        "states": states,
        "capture_blocks": capture.stats.blocks,
        "capture_peak": float(np.max(np.abs(heard.astype(np.float32) / 32768))),
        "played_samples": buffer.played_samples("reply"),
    }
    capture.stop()
    playback.stop()
    await task
    await playback.wait_closed()
    return result


def main() -> int:
    forbid_write_execute()
    print(json.dumps(asyncio.run(run(sys.argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
