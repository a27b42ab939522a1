"""The health endpoint over real HTTP on loopback, and ``kioskd status`` against it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from kioskd.config import HealthConfig, RealtimeConfig
from kioskd.health import Check, HealthServer, HealthServerError, StatusSource, cli_status
from kioskd.logs import register_secret
from kioskd.metrics import Metrics
from kioskd.service import LoopHeartbeat, Notifier, WatchdogPinger
from tests.ops.fake_secrets import SECRET
from tests.ops.status_source import KioskState
from tests.ops.tools import assert_no_secret, promtool_check

REPO = Path(__file__).resolve().parents[2]


class Kiosk:
    def __init__(self, server: HealthServer, state: KioskState, metrics: Metrics, http: aiohttp.ClientSession,
                 beaten: asyncio.Event):
        self.server, self.state, self.metrics, self.http = server, state, metrics, http
        self.beaten = beaten

    async def get(self, path: str, **headers: str) -> tuple[int, str, Mapping[str, str]]:
        async with self.http.get(f"{self.server.url}{path}", headers=headers) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def get_json(self, path: str) -> tuple[int, Any]:
        status, text, headers = await self.get(path)
        assert headers["Content-Type"].startswith("application/json")
        return status, json.loads(text)


@pytest_asyncio.fixture
async def kiosk() -> AsyncIterator[Kiosk]:
    state = KioskState()
    metrics = Metrics(CollectorRegistry())
    assert isinstance(state, StatusSource)
    server = HealthServer(HealthConfig(port=0), state, metrics.registry, stale_after_s=5.0)
    beaten = asyncio.Event()

    def on_lag(lag: float) -> None:
        metrics.loop_lag.set(lag)
        beaten.set()

    pinger = WatchdogPinger(Notifier(), lambda: True, interval_s=None, heartbeat=state.heartbeat, tick_s=0.05,
                            on_lag=on_lag)
    task = asyncio.create_task(pinger.run())
    await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            yield Kiosk(server, state, metrics, http, beaten)
    finally:
        task.cancel()
        await server.stop()


@pytest.mark.asyncio
async def test_healthz_follows_the_loop_heartbeat(kiosk: Kiosk) -> None:
    await asyncio.wait_for(kiosk.beaten.wait(), 10)
    status, body = await kiosk.get_json("/healthz")
    assert status == 200
    assert body["status"] == "ok" and body["heartbeat_age_s"] <= 5.0 and body["pid"] == os.getpid()

    now = [1000.0]
    kiosk.state.heartbeat = LoopHeartbeat(clock=lambda: now[0])
    status, body = await kiosk.get_json("/healthz")
    assert (status, body["status"]) == (503, "stalled"), "no heartbeat yet is not alive"
    kiosk.state.heartbeat.beat()
    now[0] += 6.0  # the pinger last ran 6 s ago: the loop is stuck somewhere
    status, body = await kiosk.get_json("/healthz")
    assert (status, body["status"], body["heartbeat_age_s"]) == (503, "stalled", 6.0)


@pytest.mark.asyncio
async def test_readyz_lists_the_checks_and_flips_when_audio_fails(kiosk: Kiosk) -> None:
    status, body = await kiosk.get_json("/readyz")
    assert status == 200 and body["status"] == "ready" and body["failing"] == []
    assert set(body["checks"]) == {"audio_input", "wake_model", "credentials", "budget"}

    kiosk.state.checks["audio_input"] = Check(False, "no block from 'pulse' for 5.0 s")
    status, body = await kiosk.get_json("/readyz")
    assert status == 503 and body["status"] == "not_ready" and body["failing"] == ["audio_input"]
    assert body["checks"]["audio_input"] == {"ok": False, "detail": "no block from 'pulse' for 5.0 s"}

    kiosk.state.checks["audio_input"] = Check(True)
    del kiosk.state.checks["budget"]
    status, body = await kiosk.get_json("/readyz")
    assert status == 503 and body["failing"] == ["budget"]
    assert body["checks"]["budget"]["detail"] == "not reported"


@pytest.mark.asyncio
async def test_status_shows_the_operator_what_they_need(kiosk: Kiosk) -> None:
    status, body = await kiosk.get_json("/status")
    assert status == 200
    assert body["state"] == "listening" and body["devices"] == {"input": "pulse", "output": "pulse"}
    assert body["spend"]["today_usd"] == 0.1234 and body["counters"]["wakes"] == 3
    assert body["ready"] is True and body["last_error"] is None and body["uptime_s"] == 12.5
    assert body["versions"]["kioskd"] and body["versions"]["python"]


@pytest.mark.asyncio
async def test_no_secret_in_any_body(kiosk: Kiosk) -> None:
    register_secret(SECRET)
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        assert_no_secret((await kiosk.get(path))[1])

    kiosk.state.extra_status = {"realtime": RealtimeConfig(api_key=SECRET)}  # a whole config section
    status, text, _ = await kiosk.get("/status")
    assert_no_secret(text)
    assert status == 500
    assert json.loads(text)["error"] == "response withheld: $.realtime.api_key is a secret value"

    kiosk.state.extra_status = {"last_error": f"401 from the service with key {SECRET}"}
    status, text, _ = await kiosk.get("/status")
    assert_no_secret(text)
    assert status == 500 and "$.last_error" in text

    kiosk.state.checks["credentials"] = Check(False, f"key {SECRET} refused")
    status, text, _ = await kiosk.get("/readyz")
    assert_no_secret(text)
    assert status == 500


@pytest.mark.asyncio
async def test_metrics_negotiate_the_format_and_pass_promtool(kiosk: Kiosk) -> None:
    kiosk.metrics.record_wake("hey_jarvis")
    kiosk.metrics.set_state("conversing")
    status, text, headers = await kiosk.get("/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'kioskd_wake_detections_total{model="hey_jarvis"} 1.0' in text
    assert 'kioskd_state{kioskd_state="conversing"} 1.0' in text
    assert "kioskd_event_loop_lag_seconds" in text
    check = promtool_check(text.encode())
    assert check.returncode == 0, check.stdout + check.stderr

    status, text, headers = await kiosk.get(
        "/metrics", Accept="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert text.rstrip().endswith("# EOF")


@pytest.mark.asyncio
async def test_unknown_paths_and_methods(kiosk: Kiosk) -> None:
    assert (await kiosk.get("/nope"))[0] == 404
    async with kiosk.http.post(f"{kiosk.server.url}/readyz") as resp:
        assert resp.status == 405


@pytest.mark.asyncio
async def test_a_failing_source_gives_500_and_the_server_keeps_serving(kiosk: Kiosk) -> None:
    def broken() -> dict[str, Check]:
        raise RuntimeError("device table changed size during iteration")

    kiosk.state.readiness = broken  # type: ignore[method-assign]
    status, body = await kiosk.get_json("/readyz")
    assert status == 500 and body == {"error": "readiness failed: RuntimeError"}
    status, body = await kiosk.get_json("/healthz")
    assert status == 200


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port``, read from the kernel's tables."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    if width == 8:
                        found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                    else:
                        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.asyncio
async def test_bound_to_loopback_by_default(kiosk: Kiosk) -> None:
    assert HealthConfig().host == "127.0.0.1" and HealthConfig().port == 8787
    assert listening_addresses(kiosk.server.port) == {"127.0.0.1"}


@pytest.mark.asyncio
async def test_a_taken_port_is_a_clear_error(kiosk: Kiosk) -> None:
    other = HealthServer(HealthConfig(port=kiosk.server.port), KioskState(), CollectorRegistry())
    with pytest.raises(HealthServerError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*health\.port"):
        await other.start()


def status_args(url: str | None = None, config: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(url=url, config=config)


@pytest.mark.asyncio
async def test_cli_status_exit_codes(kiosk: Kiosk, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = await asyncio.to_thread(cli_status, status_args(kiosk.server.url))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f"kioskd at {kiosk.server.url}: READY (state listening, up 12s)")
    assert "spend: today $0.1234 of $5.0000" in out and "devices: input pulse, output pulse" in out

    kiosk.state.checks["audio_input"] = Check(False, "no audio for 5 s")
    config = tmp_path / "kioskd.toml"
    config.write_text(f"[health]\nport = {kiosk.server.port}\n")
    rc = await asyncio.to_thread(cli_status, status_args(config=config))
    out = capsys.readouterr().out
    assert rc == 1 and "NOT READY" in out and "FAIL audio_input: no audio for 5 s" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKD_")}
    return subprocess.run([sys.executable, "-m", "kioskd", "status", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO, check=False)


def test_cli_status_unreachable_and_bad_input_without_traceback(tmp_path: Path) -> None:
    down = run_cli("--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2
    assert "cannot reach http://127.0.0.1:" in down.stderr and "Traceback" not in down.stderr

    bad = run_cli("--url", "ftp://example")
    assert bad.returncode == 64 and "expected http://HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr

    missing = run_cli("--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 64 and "no such file" in missing.stderr

    broken = tmp_path / "broken.toml"
    broken.write_text("[health]\nport = 'eighty'\n")
    invalid = run_cli("--config", str(broken))
    assert invalid.returncode == 64 and "health.port" in invalid.stderr and "Traceback" not in invalid.stderr
