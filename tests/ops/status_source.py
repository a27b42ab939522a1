"""A StatusSource for the health tests, shaped like the daemon's: plain state the test changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kioskd.health import READINESS_CHECKS, Check
from kioskd.service import LoopHeartbeat


@dataclass
class KioskState:
    heartbeat: LoopHeartbeat = field(default_factory=LoopHeartbeat)
    checks: dict[str, Check] = field(default_factory=lambda: {name: Check(True, "ok") for name in READINESS_CHECKS})
    extra_status: dict[str, Any] = field(default_factory=dict)

    def heartbeat_age_s(self) -> float | None:
        return self.heartbeat.age_s()

    def readiness(self) -> Mapping[str, Check]:
        return dict(self.checks)

    def status(self) -> Mapping[str, Any]:
        return {
            "state": "listening",
            "devices": {"input": "pulse", "output": "pulse"},
            "uptime_s": 12.5,
            "counters": {"wakes": 3, "sessions": 2, "barge_ins": 1},
            "last_error": None,
            "spend": {"today_usd": 0.1234, "daily_budget_usd": 5.0, "session_usd": None},
            **self.extra_status,
        }
