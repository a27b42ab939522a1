"""Stands in for ``kioskd run`` under the real unit (systemd-nspawn test) until the daemon exists.

It runs with the unit's sandbox and checks what the daemon will rely on there, then reports through the
real sd_notify + health endpoint: the config loads (with the key from $CREDENTIALS_DIRECTORY), the state
directory is writable, the system is read-only elsewhere, then READY=1, watchdog pings, /readyz on
the configured address, and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kioskd.config import ConfigError, load_settings
from kioskd.health import READINESS_CHECKS, Check, HealthServer
from kioskd.logs import get_logger, log_event, register_secret, setup_logging
from kioskd.metrics import Metrics
from kioskd.service import LoopHeartbeat, Notifier, WatchdogPinger, watchdog_interval

log = get_logger("probe")


def sandbox_checks(state_dir: Path) -> dict[str, Check]:
    probe = state_dir / "probe"
    try:
        probe.write_text("ok")
        probe.unlink()
        state = Check(True, f"{state_dir} writable")
    except OSError as exc:
        state = Check(False, f"{state_dir}: {exc.strerror}")
    try:
        Path("/usr/kioskd-probe").write_text("x")
        readonly = Check(False, "/usr is writable: ProtectSystem=strict is not in force")
    except OSError:
        readonly = Check(True, "/usr read-only")
    return {"state_dir": state, "read_only_system": readonly}


class Probe:
    def __init__(self, checks: Mapping[str, Check], heartbeat: LoopHeartbeat) -> None:
        self.checks = checks
        self.heartbeat = heartbeat

    def heartbeat_age_s(self) -> float | None:
        return self.heartbeat.age_s()

    def readiness(self) -> Mapping[str, Check]:
        return self.checks

    def status(self) -> Mapping[str, Any]:
        return {"state": "listening", "credentials_directory": os.environ.get("CREDENTIALS_DIRECTORY")}


async def main() -> int:
    setup_logging("info")
    notifier = Notifier()
    try:
        settings = load_settings(Path(sys.argv[1]))
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return 78
    register_secret(settings.realtime.api_key.get_secret_value())
    checks = {name: Check(True, "probe") for name in READINESS_CHECKS}
    checks["credentials"] = Check(bool(settings.realtime.api_key.get_secret_value()), "from the credential")
    checks.update(sandbox_checks(Path(os.environ.get("STATE_DIRECTORY", "/var/lib/kioskd"))))
    heartbeat = LoopHeartbeat()
    server = HealthServer(settings.health, Probe(checks, heartbeat), Metrics().registry)
    await server.start()
    pinger = WatchdogPinger(notifier, lambda: True, interval_s=watchdog_interval(), heartbeat=heartbeat)
    task = asyncio.create_task(pinger.run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    notifier.ready("listening (probe)")
    log_event(log, "ready", "probe ready", SESSION_ID="probe", COST_USD=0)
    await stop.wait()
    notifier.stopping()
    task.cancel()
    await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
