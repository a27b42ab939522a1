"""sd_notify and the watchdog, against a real notify socket and a real child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kioskd.service import (
    Freshness,
    LoopHeartbeat,
    Notifier,
    WatchdogPinger,
    _send_with_socket,
    watchdog_interval,
)
from tests.ops.notify_socket import Datagram, NotifySocket

DRIVER = Path(__file__).parent / "drivers" / "notify_driver.py"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


def is_ping(d: Datagram) -> bool:
    return d.text == "WATCHDOG=1"


def start_driver(sock: NotifySocket, *args: str, watchdog_usec: int = 200_000) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "JOURNAL_STREAM")}
    env.update(NOTIFY_SOCKET=sock.env, WATCHDOG_USEC=str(watchdog_usec), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(DRIVER), *args], env=env, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.parametrize("sender", ["systemd-python", "fallback"])
def test_daemon_sequence_and_watchdog_follow_the_capture(notify_socket: NotifySocket, sender: str) -> None:
    proc = start_driver(notify_socket, *(["--fallback"] if sender == "fallback" else []))
    try:
        ready = notify_socket.wait_for(lambda d: "READY=1" in d.assignments, TIMEOUT_S)
        assert ready.assignments == ["READY=1", "STATUS=listening"]
        before_ready = [d.text for d in notify_socket.received[:-1]]
        assert before_ready[0] == "EXTEND_TIMEOUT_USEC=30000000", "more start time is asked for first"
        assert "STATUS=starting: loading the wake model" in before_ready
        assert not any(is_ping(d) for d in notify_socket.received), "no watchdog ping before READY"

        for _ in range(3):
            notify_socket.wait_for(is_ping, TIMEOUT_S)

        proc.send_signal(signal.SIGUSR1)  # the microphone stops delivering
        notify_socket.wait_for(lambda d: d.text == "STATUS=degraded: capture stalled", TIMEOUT_S)
        quiet = notify_socket.collect(1.0)  # five watchdog intervals
        assert not any(is_ping(d) for d in quiet), f"pings went on with a stalled capture: {quiet}"

        proc.send_signal(signal.SIGUSR2)  # capture delivers again
        notify_socket.wait_for(lambda d: d.text == "STATUS=listening", TIMEOUT_S)
        notify_socket.wait_for(is_ping, TIMEOUT_S)

        proc.send_signal(signal.SIGTERM)
        notify_socket.wait_for(lambda d: "STOPPING=1" in d.assignments, TIMEOUT_S)
    finally:
        rc, err = finish(proc)
    assert rc == 0, err
    assert "Traceback" not in err
    assert {d.pid for d in notify_socket.received} == {proc.pid}, "every message comes from the main process"


def test_without_notify_socket_nothing_is_sent(notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled
    assert quiet.ready("listening") is False
    assert quiet.status("x") is False
    assert quiet.watchdog() is False
    assert quiet.extend_timeout(5) is False
    assert quiet.stopping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env)
    assert Notifier().status("marker")
    first = notify_socket.recv(TIMEOUT_S)
    assert first is not None and first.text == "STATUS=marker", "the calls made without NOTIFY_SOCKET sent nothing"


def test_status_text_cannot_inject_assignments(notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env)
    assert Notifier().status("degraded\nREADY=1")
    got = notify_socket.recv(TIMEOUT_S)
    assert got is not None and got.assignments == ["STATUS=degraded READY=1"]


def test_abstract_namespace_socket_with_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = NotifySocket(f"@kioskd-test-{os.getpid()}")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.env)
        assert Notifier(sender=_send_with_socket).extend_timeout(2.5)
        got = sock.recv(TIMEOUT_S)
        assert got is not None and got.text == "EXTEND_TIMEOUT_USEC=2500000"
        assert got.pid == os.getpid()
    finally:
        sock.close()


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier(sender=_send_with_socket)
    assert notifier.watchdog() is False
    assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "cannot notify" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not one per ping"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # armed for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_freshness_and_heartbeat_age_with_the_clock() -> None:
    now = [100.0]
    fresh = Freshness(0.5, clock=lambda: now[0])
    assert not fresh(), "nothing delivered yet"
    fresh.touch()
    now[0] += 0.4
    assert fresh()
    now[0] += 0.2
    assert not fresh()
    beat = LoopHeartbeat(clock=lambda: now[0])
    assert beat.age_s() is None
    beat.beat(lag_s=0.01)
    now[0] += 3
    assert beat.age_s() == pytest.approx(3.0)


@pytest.mark.asyncio
async def test_a_raising_liveness_check_stops_pings_but_not_the_task(
        notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env)
    flipped = asyncio.Event()

    def liveness() -> bool:
        raise RuntimeError("capture queue closed")

    def on_change(alive: bool) -> None:
        if not alive:
            flipped.set()

    pinger = WatchdogPinger(Notifier(), liveness, interval_s=0.05, tick_s=0.05, on_change=on_change)
    task = asyncio.create_task(pinger.run())
    try:
        await asyncio.wait_for(flipped.wait(), TIMEOUT_S)
        quiet = await asyncio.to_thread(notify_socket.collect, 0.5)
        assert not quiet and pinger.pings == 0
        assert not task.done(), "the pinger keeps beating the heartbeat"
        age = pinger.heartbeat.age_s()
        assert age is not None and age < TIMEOUT_S
    finally:
        task.cancel()
