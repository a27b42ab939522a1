"""Talking to the service manager: sd_notify states and a watchdog that proves the audio pipeline is alive.

Under ``Type=notify`` systemd waits for ``READY=1`` before it counts the unit as started, shows ``STATUS=``
in ``systemctl status``, and, with ``WatchdogSec=``, kills and restarts the unit when ``WATCHDOG=1`` stops
arriving. kioskd uses that as its real liveness mechanism: the pings come from one event-loop task, and
only while a liveness callable says the microphone is still delivering blocks. A frozen loop or a stalled
capture therefore both end in a restart, which is what a kiosk nobody watches needs.

Outside systemd (``NOTIFY_SOCKET`` unset) every call here is a cheap no-op, so the daemon calls them
unconditionally. Sending goes through systemd-python's ``systemd.daemon.notify`` (Debian ships it as
``python3-systemd``); where that module is missing, a few lines of plain socket code speak the same
datagram protocol, so a missing optional package can never turn into a start-up timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

from kioskd.logs import get_logger

log = get_logger("service")

_USEC: Final = 1_000_000


def _send_with_socket(message: str) -> bool:
    """The sd_notify datagram protocol, for hosts without systemd-python."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other transports: systemd-python's job, not ours
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode("utf-8"))
    return True


def _default_sender() -> Callable[[str], bool]:
    try:
        from systemd.daemon import notify
    except ImportError:
        return _send_with_socket

    def send(message: str) -> bool:
        return bool(notify(message))

    return send


def _one_line(text: str) -> str:
    """Status text on one line: a newline would start a new assignment (e.g. a forged READY=1)."""
    return " ".join(text.split())


class Notifier:
    """sd_notify messages for the service manager; each method returns whether a message was sent.

    Nothing here raises: a notify socket that went away is logged once and the daemon carries on.
    ``sender`` exists for the pure-socket fallback and is not meant as a mocking seam.
    """

    def __init__(self, sender: Callable[[str], bool] | None = None) -> None:
        self._send = sender or _default_sender()
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (``NOTIFY_SOCKET`` is set)."""
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one datagram (atomic for systemd)."""
        if not self.enabled:
            return False
        try:
            return self._send("\n".join(assignments))
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.warning("cannot notify the service manager at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """The microphone delivers audio and the wake model is loaded: systemd may count us as started."""
        return self.notify("READY=1", *(() if status is None else (f"STATUS={_one_line(status)}",)))

    def status(self, text: str) -> bool:
        """The one-line state shown by ``systemctl status kioskd``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun; systemd then allows ``TimeoutStopSec=`` for it."""
        return self.notify("STOPPING=1", *(() if status is None else (f"STATUS={_one_line(status)}",)))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start (or stop) timeout fires, e.g. while models load."""
        usec = max(1, round(seconds * _USEC))
        return self.notify(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog(self) -> bool:
        """One keep-alive ping; send it only when the pipeline really is alive."""
        return self.notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when no watchdog is armed.

    systemd-python has no ``sd_watchdog_enabled``; this is its logic: the variables must be present,
    ``WATCHDOG_USEC`` a positive integer, and ``WATCHDOG_PID`` (when set) this very process.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", raw)
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "").strip()
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            log.warning("ignoring WATCHDOG_PID=%r: not a process id", watchdog_pid)
            return None
    return usec / _USEC / 2


class LoopHeartbeat:
    """When the event loop last ran the pinger task, and how late that run was (the loop's lag).

    ``/healthz`` reports the age; a loop blocked by a stuck call stops beating, so the age grows.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self.lag_s = 0.0

    def beat(self, lag_s: float = 0.0) -> None:
        self._last = self._clock()
        self.lag_s = max(0.0, lag_s)

    def age_s(self) -> float | None:
        """Seconds since the last beat, or None before the first one."""
        return None if self._last is None else max(0.0, self._clock() - self._last)


class Freshness:
    """Has something happened within the last ``max_age_s``? E.g. "capture delivered a block".

    Call :meth:`touch` where the thing happens (on the event loop, or from any thread: it only stores a
    float); pass the object itself as a liveness callable. It starts stale: nothing has happened yet.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_age_s = max_age_s
        self._clock = clock
        self._last: float | None = None

    def touch(self) -> None:
        self._last = self._clock()

    def age_s(self) -> float | None:
        return None if self._last is None else max(0.0, self._clock() - self._last)

    def __call__(self) -> bool:
        age = self.age_s()
        return age is not None and age <= self.max_age_s


class WatchdogPinger:
    """The loop task behind both ``WATCHDOG=1`` and the ``/healthz`` heartbeat.

    Every ``tick_s`` it beats the heartbeat (recording how late it woke: the loop lag), and every
    ``interval_s`` (see :func:`watchdog_interval`) it pings the watchdog, but only while ``liveness()``
    returns True, e.g. "capture delivered a block within the last 2 s". When liveness fails the pings
    stop, systemd's ``WatchdogSec=`` runs out and the unit is restarted (with a faulthandler stack in the
    journal). A liveness callable that raises counts as not alive; the task itself never dies of it.
    ``on_change(alive)`` runs when liveness flips (before any further ping), e.g. to report ``degraded``.
    """

    def __init__(
        self,
        notifier: Notifier,
        liveness: Callable[[], bool],
        *,
        interval_s: float | None,
        heartbeat: LoopHeartbeat | None = None,
        tick_s: float = 1.0,
        on_lag: Callable[[float], None] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.notifier = notifier
        self.liveness = liveness
        self.interval_s = interval_s
        self.heartbeat = heartbeat or LoopHeartbeat()
        self.tick_s = tick_s if interval_s is None else min(tick_s, interval_s)
        self.on_lag = on_lag
        self.on_change = on_change
        self.pings = 0
        self._alive = True

    def _check_liveness(self) -> bool:
        try:
            alive = bool(self.liveness())
        except Exception as exc:
            log.error("liveness check failed: %s", exc)
            alive = False
        if alive != self._alive:
            self._alive = alive
            if alive:
                log.info("pipeline alive again; watchdog pings resumed")
            else:
                log.warning("pipeline not alive; watchdog pings paused (systemd restarts us if this lasts)")
            if self.on_change is not None:
                try:
                    self.on_change(alive)
                except Exception as exc:
                    log.error("liveness change callback failed: %s", exc)
        return alive

    async def run(self) -> None:
        """Run until cancelled."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        expected = loop.time()
        while True:
            now = loop.time()
            lag = max(0.0, now - expected)
            self.heartbeat.beat(lag)
            if self.on_lag is not None:
                try:
                    self.on_lag(lag)
                except Exception as exc:
                    log.error("loop lag callback failed: %s", exc)
            if self.interval_s is not None and now >= next_ping:
                if self._check_liveness() and self.notifier.watchdog():
                    self.pings += 1
                next_ping = now + self.interval_s
            expected = now + self.tick_s
            await asyncio.sleep(self.tick_s)
