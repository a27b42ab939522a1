"""Assembly: build the daemon's parts from the settings, run them, and take them down again.

``kioskd run`` uses real devices; ``kioskd demo`` hands in file-backed audio and the bundled simulator.
Everything else — state machine, wake detector, realtime client, budget, health endpoint, sd_notify and the
watchdog — is the same code in both, assembled here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kioskd.audio.earcons import Earcons
from kioskd.audio.echo import UplinkEcho, build_uplink_echo
from kioskd.audio.playback import JitterBuffer
from kioskd.audio.wav import WavError
from kioskd.budget import Budget, Ledger
from kioskd.config import EX_CONFIG, RealtimeConfig, Settings, load_or_exit, report_problems
from kioskd.daemon import Daemon, DaemonEvent, State, install_signal_handlers
from kioskd.health import Check, HealthServer
from kioskd.logs import get_logger, log_event, register_secret, setup_logging
from kioskd.memory import limit_malloc_arenas, release_free_memory
from kioskd.metrics import Metrics
from kioskd.realtime.auth import Authenticator, make_authenticator
from kioskd.realtime.client import open_session
from kioskd.realtime.endpoint import build_realtime_url
from kioskd.service import Freshness, LoopHeartbeat, Notifier, WatchdogPinger, watchdog_interval
from kioskd.wake import WakeDetector, WakeModelError

log = get_logger("runtime")
# Capture must deliver a block at least this often for the pipeline to count as alive (watchdog, /readyz).
CAPTURE_STALL_S = 2.0
MODEL_LOAD_ALLOWANCE_S = 90.0
DEVICE_CLOSE_S = 5.0


class AudioIn(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


class AudioOut(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    async def wait_closed(self) -> None: ...


@dataclass
class Parts:
    """The device-dependent parts: how audio comes in and goes out."""

    make_input: Callable[[Daemon, Callable[[Any], None]], AudioIn]
    output: AudioOut
    buffer: JitterBuffer
    devices: Mapping[str, str] = field(default_factory=dict)
    echo: UplinkEcho | None = None


class DaemonStatus:
    """What the health endpoint shows, read from the running parts."""

    def __init__(self, daemon: Daemon, heartbeat: LoopHeartbeat, capture_fresh: Freshness, parts: Parts) -> None:
        self.daemon = daemon
        self.heartbeat = heartbeat
        self.capture_fresh = capture_fresh
        self.parts = parts
        self.credentials = _credentials_check(daemon.settings.realtime)

    def heartbeat_age_s(self) -> float | None:
        return self.heartbeat.age_s()

    def readiness(self) -> Mapping[str, Check]:
        d = self.daemon
        mic = self.capture_fresh() and d.mic_ok
        budget_ok = not d.budget.daily_exhausted
        return {
            "audio_input": Check(mic, "delivering audio" if mic else (d.last_error or "no audio from the microphone")),
            "wake_model": Check(d.detector is not None, "loaded" if d.detector is not None else "not loaded"),
            "credentials": self.credentials,
            "budget": Check(budget_ok, "within today's budget" if budget_ok else "today's budget is spent"),
        }

    def status(self) -> Mapping[str, Any]:
        d = self.daemon
        body = dict(d.status())
        buffer = self.parts.buffer
        body["devices"] = dict(self.parts.devices)
        body["counters"] = {**body["counters"], **buffer.counters()}
        body["spend"] = {
            "today_usd": round(d.budget.ledger.spent_today, 6),
            "daily_budget_usd": d.settings.budget.daily_usd,
            "session_usd": None if d.session is None else round(d.session.spend.usd, 6),
        }
        body["wake_models"] = list(d.settings.wake.models)
        echo = self.parts.echo
        body["echo_cancellation"] = "off" if echo is None else echo.describe()
        body["echo_gate"] = "off" if echo is None else echo.describe_gate()
        if echo is not None:
            body["counters"].update(echo.counters())
        return body


def _credentials_check(cfg: RealtimeConfig) -> Check:
    """Whether a session could authenticate; the configuration loader already refused an empty key for Azure."""
    if cfg.auth == "entra":
        return Check(True, "Microsoft Entra ID (a token is fetched before each connect)")
    if cfg.api_key.get_secret_value():
        return Check(True, "API key present")
    if build_realtime_url(cfg.endpoint, cfg.deployment).is_loopback:
        return Check(True, "none needed for a local endpoint")
    return Check(False, "no API key")


def _metrics_listener(metrics: Metrics) -> Callable[[DaemonEvent], None]:
    def on_event(event: DaemonEvent) -> None:
        f = event.fields
        if event.name == "wake":
            metrics.record_wake(str(f["model"]))
        elif event.name == "state":
            metrics.set_state(str(f["state"]))
            metrics.websocket_connected.set(1 if f["state"] in ("conversing",) else 0)
        elif event.name == "barge_in":
            metrics.barge_ins.inc()
        elif event.name == "session_close":
            metrics.record_session(str(f["reason"]), float(f["duration_s"]), float(f["cost_usd"]))
        elif event.name == "connect_failed":
            metrics.errors.labels(kind="connect").inc()
        elif event.name == "server_error":
            metrics.errors.labels(kind="server").inc()
        elif event.name == "refused":
            metrics.sessions.labels(outcome="refused").inc()

    return on_event


async def run_daemon(
    settings: Settings,
    parts: Parts,
    *,
    on_daemon: Callable[[Daemon], None] | None = None,
    on_health: Callable[[HealthServer], None] | None = None,
    auth: Authenticator | None = None,
) -> int:
    """Run until stopped (SIGTERM/SIGINT, or ``daemon.stop()``); return the exit status."""
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    notifier.status("starting")
    notifier.extend_timeout(MODEL_LOAD_ALLOWANCE_S)
    register_secret(settings.realtime.api_key.get_secret_value())
    budget = Budget(settings.budget, Ledger(settings.budget.state_dir))
    authenticator = auth or make_authenticator(settings.realtime)
    buffer = parts.buffer

    def open_link(speaker: Any) -> Any:
        return open_session(settings.realtime, authenticator, speaker)

    daemon = Daemon(settings, speaker=buffer, open_session=open_link, budget=budget)
    daemon.uplink_filter = parts.echo
    metrics = Metrics()
    metrics.daily_budget.set(settings.budget.daily_usd)
    daemon.listeners.append(_metrics_listener(metrics))

    def report_state(state: State, reason: str) -> None:
        notifier.status(f"{state.value}: {reason}")
        if state is State.LISTENING:
            release_free_memory()  # what loading the model or the last session freed goes back to the system

    daemon.state_listeners.append(report_state)
    if on_daemon is not None:
        on_daemon(daemon)

    heartbeat = LoopHeartbeat()
    capture_fresh = Freshness(CAPTURE_STALL_S)
    status = DaemonStatus(daemon, heartbeat, capture_fresh, parts)
    health: HealthServer | None = None
    audio_in: AudioIn | None = None
    capture_task: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        try:
            daemon.detector = await WakeDetector.create(settings.wake, daemon.on_wake)
        except WakeModelError as exc:
            log.error("wake.models: %s", exc)
            return EX_CONFIG

        ready = asyncio.Event()

        def on_block(block: Any) -> None:
            capture_fresh.touch()
            daemon.on_block(block)
            if not ready.is_set() and daemon.detector is not None:
                ready.set()

        audio_in = parts.make_input(daemon, on_block)
        parts.output.start()
        if settings.health.enabled:
            health = HealthServer(settings.health, status, metrics.registry)
            await health.start()
            if on_health is not None:
                on_health(health)
        pinger = WatchdogPinger(
            notifier, capture_fresh, interval_s=watchdog_interval(), heartbeat=heartbeat,
            on_lag=metrics.loop_lag.set,
            # Before the first block the microphone is still opening: that is starting, not a stall.
            on_change=lambda alive: None if alive or not ready.is_set() else daemon.on_mic_state(
                False, "capture stalled"),
        )
        capture_task = loop.create_task(audio_in.run(), name="capture")
        tasks = [loop.create_task(pinger.run(), name="watchdog")]
        install_signal_handlers(daemon)
        stop_wait = loop.create_task(daemon.wait_stopped())
        ready_wait = loop.create_task(ready.wait())
        done, _ = await asyncio.wait({stop_wait, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if ready_wait in done:
            daemon.on_mic_state(True, "")
            notifier.ready(f"{daemon.state.value}: microphone delivering audio, wake model loaded")
            metrics.ready.set(1)
            log_event(log, "ready", "ready: listening for %s", ", ".join(settings.wake.models),
                      KIOSKD_STATE=daemon.state.value)
        else:
            ready_wait.cancel()
        await stop_wait
        notifier.stopping("stopping")
        return 0
    finally:
        # Close the streams and let their tasks finish before the interpreter does: a PortAudio thread
        # still calling into Python during finalisation can take the process down with it.
        if audio_in is not None:
            audio_in.stop()
        parts.output.stop()
        closing = [parts.output.wait_closed()] + ([capture_task] if capture_task is not None else [])
        with contextlib.suppress(TimeoutError, Exception):
            async with asyncio.timeout(DEVICE_CLOSE_S):
                await asyncio.gather(*closing, return_exceptions=True)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if health is not None:
            await health.stop()
        if daemon.detector is not None:
            daemon.detector.close()
        await authenticator.aclose()
        if daemon.state is not State.STOPPING:
            daemon.set_state(State.STOPPING, "shut down")


def _speaker_state(up: bool, reason: str) -> None:
    if up:
        log.info("speaker playing")
    else:
        log_event(log, "error", "speaker lost: %s", reason, level=logging.ERROR, REASON=reason)


def device_parts(settings: Settings) -> Parts:
    from kioskd.audio.capture import Capture
    from kioskd.audio.playback import Playback

    buffer = JitterBuffer(settings.audio, earcons=Earcons(settings.audio))
    output = Playback(settings.audio, buffer, on_state=_speaker_state)
    echo = build_uplink_echo(settings.audio)
    if echo.needs_reference:
        buffer.on_output = echo.tap.hook_for(lambda: buffer.rate)

    def make_input(daemon: Daemon, on_block: Callable[[Any], None]) -> AudioIn:
        loop = asyncio.get_running_loop()
        return Capture(settings.audio, on_block, daemon.on_mic_state, loop=loop)

    devices = {"input": str(settings.audio.input_device), "output": str(settings.audio.output_device)}
    return Parts(make_input=make_input, output=output, buffer=buffer, devices=devices, echo=echo)


def run_device_daemon(args: argparse.Namespace) -> int:
    limit_malloc_arenas()  # before any thread starts (kioskd.memory)
    settings = load_or_exit(args.config)
    setup_logging(settings.logging.level)
    try:
        parts = device_parts(settings)
    except WavError as exc:
        return report_problems([str(exc)], args.config)
    logging.captureWarnings(True)
    log.info("kioskd starting: endpoint %s, wake %s", settings.realtime.url, ", ".join(settings.wake.models))
    return asyncio.run(run_daemon(settings, parts))
