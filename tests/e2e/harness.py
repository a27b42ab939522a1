"""The real daemon on the virtual audio rig, talking to the simulator over real WebSockets.

``DaemonUnderTest`` runs :func:`kioskd.runtime.run_daemon` with the device parts (sounddevice → PortAudio →
ALSA ``pulse`` → the rig's PulseAudio) in the test's event loop, records the daemon's timeline and log
lines, and offers waits on them with timeouts — never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kioskd.config import Settings, deep_merge, load_settings
from kioskd.daemon import Daemon, DaemonEvent, State
from kioskd.health import HealthServer
from kioskd.runtime import device_parts, run_daemon

KEY = "rig-test-key-0123456789"
WAIT_S = 60.0


def rig_settings(state_dir: Path, sim_url: str, overrides: Mapping[str, Any] | None = None) -> Settings:
    base: dict[str, Any] = {
        "audio": {"input_device": "pulse", "output_device": "pulse", "echo_cancellation": "off"},
        "realtime": {"endpoint": sim_url, "api_key": KEY},
        "session": {"idle_timeout_s": 3.0, "connect_backoff_s": 0.2, "connect_backoff_max_s": 1.0},
        "budget": {"state_dir": str(state_dir)},
        "health": {"port": 0},
    }
    return load_settings(Path(os.devnull), environ={}, overrides=deep_merge(base, overrides or {}))


class _Lines(logging.Handler):
    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[logging.LogRecord] = []
        self._changed = changed

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record)
        self._changed()


class DaemonUnderTest:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parts = device_parts(settings)
        self.daemon: Daemon | None = None
        self.health_url: str | None = None
        self.events: list[DaemonEvent] = []
        self.exit_status: int | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[int] | None = None
        self._log = _Lines(self._changed.set)

    # -- running ----------------------------------------------------------------------------------------

    def _attach(self, daemon: Daemon) -> None:
        self.daemon = daemon

        def record(event: DaemonEvent) -> None:
            self.events.append(event)
            self._changed.set()

        daemon.listeners.append(record)

    def _health(self, server: HealthServer) -> None:
        self.health_url = server.url

    async def start(self, until: State = State.LISTENING) -> Daemon:
        logger = logging.getLogger("kioskd")
        logger.addHandler(self._log)
        logger.setLevel(logging.INFO)
        self._task = asyncio.get_running_loop().create_task(
            run_daemon(self.settings, self.parts, on_daemon=self._attach, on_health=self._health))
        await self.wait_for(lambda: self.daemon is not None and self.daemon.state is until,
                            f"the daemon to be {until.value}", limit_s=90)
        assert self.daemon is not None
        return self.daemon

    async def stop(self) -> int:
        logging.getLogger("kioskd").removeHandler(self._log)
        if self._task is None:
            return 0
        if self.daemon is not None:
            self.daemon.stop()
        self.exit_status = await asyncio.wait_for(self._task, 20)
        return self.exit_status

    # -- waiting --------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], what: str, limit_s: float = WAIT_S) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            value = predicate()
            if value:
                return value
            if self._task is not None and self._task.done():
                raise AssertionError(f"the daemon ended (status {self._task.result()}) while waiting for {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                names = [e.name for e in self.events]
                raise AssertionError(f"timed out after {limit_s:g} s waiting for {what}; events so far: {names}; "
                                     f"warnings and errors:\n{self.log_text(logging.WARNING)}")
            self._changed.clear()
            # Wake on any event or log line, and at least every 100 ms for conditions on other objects.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))

    async def wait_event(self, name: str, after: int = 0, limit_s: float = WAIT_S,
                         where: Callable[[DaemonEvent], bool] = lambda e: True) -> DaemonEvent:
        found: DaemonEvent = await self.wait_for(
            lambda: next((e for e in self.events[after:] if e.name == name and where(e)), None),
            f"event {name!r}", limit_s)
        return found

    async def wait_state(self, state: State, limit_s: float = WAIT_S) -> None:
        assert self.daemon is not None
        daemon = self.daemon
        await self.wait_for(lambda: daemon.state is state, f"state {state.value}", limit_s)

    def named(self, name: str) -> list[DaemonEvent]:
        return [e for e in self.events if e.name == name]

    def log_text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(r.getMessage() for r in self._log.lines if r.levelno >= level)

    def log_fields(self, event: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in vars(r).items() if k.isupper()} for r in self._log.lines
                if getattr(r, "KIOSKD_EVENT", None) == event]
