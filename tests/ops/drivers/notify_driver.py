"""A small daemon that drives kioskd.service the way kioskd's daemon does, for the sd_notify tests.

It asks for more start time, "captures" (a task that marks a Freshness every 20 ms), sends READY once
capture delivers, and runs the WatchdogPinger with that freshness as liveness. Signals steer it:
SIGUSR1 stalls the capture, SIGUSR2 resumes it, SIGTERM shuts it down (STOPPING=1, exit 0).
``--fallback`` sends through the plain-socket fallback instead of systemd-python.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from kioskd.service import Freshness, Notifier, WatchdogPinger, _send_with_socket, watchdog_interval


async def main(fallback: bool) -> int:
    loop = asyncio.get_running_loop()
    notifier = Notifier(sender=_send_with_socket) if fallback else Notifier()
    stop = asyncio.Event()
    capturing = asyncio.Event()
    capturing.set()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, capturing.clear)
    loop.add_signal_handler(signal.SIGUSR2, capturing.set)

    notifier.extend_timeout(30)
    notifier.status("starting: loading the wake model")
    delivered = Freshness(max_age_s=0.3)
    first_block = asyncio.Event()

    async def capture() -> None:
        while True:
            await capturing.wait()
            delivered.touch()
            first_block.set()
            await asyncio.sleep(0.02)

    def on_change(alive: bool) -> None:
        notifier.status("listening" if alive else "degraded: capture stalled")

    capture_task = asyncio.create_task(capture())
    await first_block.wait()
    notifier.ready("listening")
    pinger = WatchdogPinger(notifier, delivered, interval_s=watchdog_interval(), tick_s=0.05, on_change=on_change)
    pinger_task = asyncio.create_task(pinger.run())
    await stop.wait()
    notifier.stopping("stopping")
    for task in (pinger_task, capture_task):
        task.cancel()
    await asyncio.gather(pinger_task, capture_task, return_exceptions=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main("--fallback" in sys.argv[1:])))
