"""Prometheus metrics for one kioskd process, in a registry of its own.

A dedicated :class:`~prometheus_client.CollectorRegistry` (not the library's global one) keeps tests and
several daemons in one process from sharing counters, and keeps ``/metrics`` to what kioskd means to say.
Names follow Prometheus conventions (``kioskd_`` prefix, base units, ``_total`` on counters) and pass
``promtool check metrics``; label values come from small fixed sets (model names, outcomes, token kinds,
states), never from visitors' speech or session ids, so the series count stays bounded on a fleet.

The daemon records through the small methods below, so label names live in one place.
"""

from __future__ import annotations

import platform
from dataclasses import fields
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from kioskd import __version__
from kioskd.budget import TokenUsage
from kioskd.logs import get_logger

log = get_logger("metrics")

STATES: Final = (
    "starting",
    "listening",
    "connecting",
    "conversing",
    "closing",
    "degraded",
    "budget_exhausted",
    "stopping",
)
# Sessions last seconds to minutes, capped below Azure's 30 minutes.
SESSION_BUCKETS: Final = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)


class Metrics:
    """Every kioskd metric, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, commit: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        ProcessCollector(registry=reg)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=reg)
        self.wake_detections = Counter(
            "kioskd_wake_detections_total", "Wake-word detections, by model.", ["model"], registry=reg
        )
        self.sessions = Counter(
            "kioskd_sessions_total",
            "Realtime sessions ended, by outcome (idle, max_duration, session_budget, shutdown, error, "
            "connect_failed, budget_refused).",
            ["outcome"],
            registry=reg,
        )
        self.session_duration = Histogram(
            "kioskd_session_duration_seconds", "Length of realtime sessions.", buckets=SESSION_BUCKETS, registry=reg
        )
        self.cost = Counter("kioskd_realtime_cost_usd_total", "Spend on the realtime API since start, in USD.",
                            registry=reg)
        self.tokens = Counter(
            "kioskd_realtime_tokens_total",
            "Tokens billed, by kind (text_in, audio_in, cached_text_in, cached_audio_in, text_out, audio_out).",
            ["kind"],
            registry=reg,
        )
        self.spent_today = Gauge("kioskd_budget_spent_today_usd", "Spend today from the ledger (survives restarts).",
                                 registry=reg)
        self.daily_budget = Gauge("kioskd_budget_daily_usd", "The configured daily budget (0: no limit).",
                                  registry=reg)
        self.input_overflows = Counter(
            "kioskd_audio_input_overflows_total", "Capture overflows reported by the audio device.", registry=reg
        )
        self.output_underruns = Counter(
            "kioskd_audio_output_underruns_total", "Playback underruns reported by the audio device.", registry=reg
        )
        self.dropped_blocks = Counter(
            "kioskd_audio_dropped_blocks_total", "Captured blocks dropped because the hand-over queue was full.",
            registry=reg,
        )
        self.barge_ins = Counter("kioskd_barge_ins_total", "Replies interrupted by the visitor.", registry=reg)
        self.errors = Counter("kioskd_errors_total", "Errors handled, by kind.", ["kind"], registry=reg)
        self.websocket_connected = Gauge(
            "kioskd_websocket_connected", "1 while a realtime WebSocket is open.", registry=reg
        )
        self.ready = Gauge("kioskd_ready", "1 while kioskd is ready to serve a visitor (/readyz).", registry=reg)
        self.state = Enum("kioskd_state", "The daemon's state.", states=list(STATES), registry=reg)
        self.loop_lag = Gauge(
            "kioskd_event_loop_lag_seconds", "How late the event loop ran its last periodic task.", registry=reg
        )
        self.build = Info("kioskd_build", "Versions of kioskd and Python.", registry=reg)
        self.build.info({"version": __version__, "commit": commit, "python": platform.python_version()})

    def record_wake(self, model: str) -> None:
        self.wake_detections.labels(model=model).inc()

    def record_session(self, outcome: str, duration_s: float, cost_usd: float) -> None:
        self.sessions.labels(outcome=outcome).inc()
        self.session_duration.observe(max(0.0, duration_s))
        self.add_cost(cost_usd)

    def add_cost(self, usd: float) -> None:
        if usd > 0:
            self.cost.inc(usd)

    def add_usage(self, usage: TokenUsage) -> None:
        for kind in fields(usage):
            count = getattr(usage, kind.name)
            if count > 0:
                self.tokens.labels(kind=kind.name).inc(count)

    def set_state(self, state: str) -> None:
        """Record ``state``; an unknown name is logged, not raised (a typo must not stop the daemon)."""
        try:
            self.state.state(state)
        except ValueError:
            log.error("metrics: unknown state %r (known: %s)", state, ", ".join(STATES))
