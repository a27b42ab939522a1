"""The metric set: names Prometheus accepts, values that follow what the daemon records."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from kioskd.budget import TokenUsage
from kioskd.metrics import Metrics
from tests.ops.tools import promtool_check


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_metric_passes_promtool() -> None:
    metrics = Metrics(CollectorRegistry(), commit="abc1234")
    metrics.record_wake("hey_jarvis")
    metrics.record_session("idle", 42.0, 0.0123)
    metrics.add_usage(TokenUsage(audio_in=300, cached_audio_in=100, audio_out=600, text_out=20))
    metrics.set_state("listening")
    metrics.websocket_connected.set(1)
    exposition = generate_latest(metrics.registry)
    check = promtool_check(exposition)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", "promtool has remarks"
    names = {line.split()[2] for line in exposition.decode().splitlines() if line.startswith("# TYPE kioskd_")}
    assert names >= {
        "kioskd_wake_detections_total", "kioskd_sessions_total", "kioskd_session_duration_seconds",
        "kioskd_realtime_cost_usd_total", "kioskd_realtime_tokens_total", "kioskd_audio_input_overflows_total",
        "kioskd_audio_output_underruns_total", "kioskd_audio_dropped_blocks_total", "kioskd_barge_ins_total",
        "kioskd_websocket_connected", "kioskd_ready", "kioskd_state", "kioskd_event_loop_lag_seconds",
        "kioskd_build_info",
    }


def test_promtool_does_reject_a_badly_named_metric() -> None:
    registry = CollectorRegistry()
    Counter("kioskd_latency_ms", "A name with an abbreviated unit.", registry=registry).inc()
    check = promtool_check(generate_latest(registry))
    assert check.returncode != 0 and "abbreviated units" in check.stdout + check.stderr


def test_recorded_values() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.record_wake("hey_jarvis")
    metrics.record_wake("hey_jarvis")
    metrics.record_session("max_duration", 600.0, 0.25)
    metrics.record_session("connect_failed", 0.0, 0.0)
    metrics.add_usage(TokenUsage(audio_in=300, cached_audio_in=100))
    assert sample(metrics, "kioskd_wake_detections_total", model="hey_jarvis") == 2
    assert sample(metrics, "kioskd_sessions_total", outcome="max_duration") == 1
    assert sample(metrics, "kioskd_session_duration_seconds_count") == 2
    assert sample(metrics, "kioskd_realtime_cost_usd_total") == pytest.approx(0.25)
    assert sample(metrics, "kioskd_realtime_tokens_total", kind="audio_in") == 300
    assert sample(metrics, "kioskd_realtime_tokens_total", kind="cached_audio_in") == 100
    assert sample(metrics, "kioskd_realtime_tokens_total", kind="text_out") is None
    assert sample(metrics, "kioskd_build_info", version="0.1.0", commit="", python=__import__("platform")
                  .python_version()) == 1


def test_state_is_one_hot_and_an_unknown_state_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.set_state("conversing")
    metrics.set_state("sleeping")
    assert sample(metrics, "kioskd_state", kioskd_state="conversing") == 1
    assert sample(metrics, "kioskd_state", kioskd_state="listening") == 0
    assert any("unknown state 'sleeping'" in r.getMessage() for r in caplog.records)


def test_two_instances_do_not_share_counters() -> None:
    a, b = Metrics(), Metrics()
    a.barge_ins.inc()
    assert sample(a, "kioskd_barge_ins_total") == 1 and sample(b, "kioskd_barge_ins_total") == 0
