"""The local health endpoint (``/healthz``, ``/readyz``, ``/status``, ``/metrics``) and ``kioskd status``.

Why aiohttp and not a 40-line ``asyncio.start_server``: kioskd already depends on aiohttp (azure-identity's
async transport uses it), so it costs no new package, and it brings a correct HTTP/1.1 parser, keep-alive,
proper 404/405 answers and HEAD for free: code we would otherwise own on a device exposed to scrapers.
The server runs on the daemon's own event loop on purpose: if the loop freezes, ``/healthz`` stops
answering too, and the heartbeat it reports is the one the watchdog pinger beats (see
:mod:`kioskd.service`), so the endpoint never says "alive" about a process that is not.

What the endpoint shows comes from a :class:`StatusSource` the daemon implements. Every JSON body passes
through :func:`public_json`, which refuses to serialise a ``SecretStr`` or any string containing a
registered secret (:func:`kioskd.logs.register_secret`): a programming slip produces a 500 naming the
field, never a leaked key. It binds 127.0.0.1 by default; a non-loopback ``health.host`` is logged as a
warning because ``/status`` names devices and spend.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import http.client
import json
import math
import os
import platform
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path, PurePath
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from kioskd import __version__
from kioskd.config import DEFAULT_CONFIG_PATH, HealthConfig, env_overrides
from kioskd.logs import get_logger, redact

log = get_logger("health")

READINESS_CHECKS: Final = ("audio_input", "wake_model", "credentials", "budget")
DEFAULT_STALE_AFTER_S: Final = 10.0
EX_READY, EX_NOT_READY, EX_UNREACHABLE, EX_USAGE = 0, 1, 2, 64


@dataclasses.dataclass(frozen=True)
class Check:
    """One readiness check: whether it passes, and a short reason a person can act on."""

    ok: bool
    detail: str = ""


@runtime_checkable
class StatusSource(Protocol):
    """What the daemon tells the health endpoint. All three are called on the event loop; keep them cheap.

    ``status()`` should carry: ``state``, ``devices`` (input/output names), ``uptime_s``, ``counters``
    (wakes, sessions, barge-ins, overflows, ...), ``last_error`` (text or None), ``spend``
    (``today_usd``, ``daily_budget_usd``, ``session_usd`` or None). The server adds ``versions``,
    ``ready`` and ``checks``.
    """

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the loop heartbeat last beat (``LoopHeartbeat.age_s``); None before the first."""
        ...

    def readiness(self) -> Mapping[str, Check]:
        """One entry per name in :data:`READINESS_CHECKS`; a missing one counts as failing."""
        ...

    def status(self) -> Mapping[str, Any]:
        ...


class SecretInBody(ValueError):
    """A response body would have contained a secret; the message names where, never what."""


def public_json(value: Any, where: str = "$") -> Any:
    """``value`` as plain JSON data, refusing secrets and types that could hide one.

    Pydantic models and dataclasses are walked field by field (so a ``SecretStr`` inside is caught);
    anything else unknown is refused rather than turned into ``str()``, which could print a secret.
    """
    if isinstance(value, SecretStr | SecretBytes):
        raise SecretInBody(f"{where} is a secret value")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return public_json(value.value, where)
    if isinstance(value, str | PurePath | datetime | date):
        text = value.isoformat() if isinstance(value, datetime | date) else str(value)
        if redact(text) != text:
            raise SecretInBody(f"{where} contains a registered secret")
        return text
    if isinstance(value, BaseModel):
        return public_json({name: getattr(value, name) for name in type(value).model_fields}, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return public_json({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SecretInBody(f"{where} has a non-text key of type {type(key).__name__}")
            public_json(key, f"{where} key")
            out[key] = public_json(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [public_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise SecretInBody(f"{where} has type {type(value).__name__}, which is not shown (it could hold a secret)")


def versions() -> dict[str, str]:
    import aiohttp

    return {"kioskd": __version__, "python": platform.python_version(), "aiohttp": aiohttp.__version__}


class HealthServerError(RuntimeError):
    """The endpoint could not start; the message names the setting to change."""


class StatusUsageError(ValueError):
    """``kioskd status`` was given something it cannot use (a bad ``--url`` or configuration)."""


class HealthServer:
    """The HTTP endpoint, on the daemon's event loop. ``port`` is the bound port (useful with port 0)."""

    def __init__(
        self,
        cfg: HealthConfig,
        source: StatusSource,
        registry: CollectorRegistry,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.registry = registry
        self.stale_after_s = stale_after_s
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._started = time.monotonic()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the health server is not started")
        return self._port

    @property
    def url(self) -> str:
        host = self.cfg.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        if not self.cfg.loopback_only:
            log.warning("health endpoint listens on %s, beyond this machine: /status shows device names and "
                        "spend (health.host)", self.cfg.host)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise HealthServerError(
                f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror or exc} "
                "(change health.host / health.port, or set health.enabled = false)"
            ) from None
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        log.info("health endpoint on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- handlers ---------------------------------------------------------------------------------------

    def _json(self, body: Mapping[str, Any], status: int = 200) -> web.Response:
        try:
            data = public_json(body)
        except SecretInBody as exc:
            log.error("response withheld: %s", exc)
            data, status = {"error": f"response withheld: {exc}"}, 500
        return web.Response(text=json.dumps(data, indent=1) + "\n", status=status, content_type="application/json")

    def _failure(self, what: str, exc: Exception) -> web.Response:
        log.error("health endpoint: %s failed: %s", what, redact(str(exc)))
        return self._json({"error": f"{what} failed: {type(exc).__name__}"}, 500)

    def _checks(self) -> dict[str, Check]:
        reported = self.source.readiness()
        checks = {name: reported.get(name, Check(False, "not reported")) for name in READINESS_CHECKS}
        for name, check in reported.items():
            checks.setdefault(name, check)
        return checks

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            age = self.source.heartbeat_age_s()
        except Exception as exc:
            return self._failure("heartbeat", exc)
        fresh = age is not None and age <= self.stale_after_s
        body = {
            "status": "ok" if fresh else "stalled",
            "heartbeat_age_s": None if age is None else round(age, 3),
            "stale_after_s": self.stale_after_s,
            "pid": os.getpid(),
        }
        return self._json(body, 200 if fresh else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            checks = self._checks()
        except Exception as exc:
            return self._failure("readiness", exc)
        ready = all(c.ok for c in checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
            "failing": [name for name, c in checks.items() if not c.ok],
            "version": __version__,
        }
        return self._json(body, 200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        try:
            checks = self._checks()
            body = dict(self.source.status())
        except Exception as exc:
            return self._failure("status", exc)
        body.setdefault("uptime_s", round(time.monotonic() - self._started, 1))
        body["ready"] = all(c.ok for c in checks.values())
        body["checks"] = {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}
        body["versions"] = versions()
        return self._json(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            payload = encoder(self.registry)
        except Exception as exc:
            return self._failure("metrics", exc)
        return web.Response(body=payload, headers={"Content-Type": content_type})


# -- kioskd status ----------------------------------------------------------------------------------------


def _health_config(path: Path | None) -> HealthConfig:
    """Only the ``[health]`` section: ``kioskd status`` must work for a user who cannot read the API key."""
    file_path = DEFAULT_CONFIG_PATH if path is None else path
    data: dict[str, Any] = {}
    try:
        with open(file_path, "rb") as fh:
            section = tomllib.load(fh).get("health", {})
        if isinstance(section, dict):
            data.update(section)
    except FileNotFoundError:
        if path is not None:
            raise StatusUsageError(f"{file_path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        print(f"kioskd status: cannot read {file_path} ({type(exc).__name__}); using the default address",
              file=sys.stderr)
    env_section = env_overrides(os.environ)[0].get("health", {})
    if isinstance(env_section, dict):
        data.update(env_section)
    try:
        return HealthConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise StatusUsageError(f"{file_path}: health.{where}: {first['msg']}") from None


def _base_url(args: argparse.Namespace) -> str:
    url: str | None = getattr(args, "url", None)
    if url:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StatusUsageError(f"--url {url!r}: expected http://HOST:PORT")
        try:
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError:
            raise StatusUsageError(f"--url {url!r}: the port is not a number from 0 to 65535") from None
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    cfg = _health_config(getattr(args, "config", None))
    if not cfg.enabled:
        raise HealthServerError("the health endpoint is disabled (health.enabled = false); nothing to ask")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.host, cfg.host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{cfg.port}"


def _fetch(url: str, timeout_s: float) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return status, None


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return " ".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def _usd(value: Any) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) else "-"


def format_status(base: str, ready: bool, readyz: Mapping[str, Any], status: Mapping[str, Any] | None) -> str:
    """The human view of ``/readyz`` + ``/status`` printed by ``kioskd status``."""
    lines = []
    state = status.get("state", "?") if status else "?"
    uptime = status.get("uptime_s") if status else None
    up = f", up {_duration(uptime)}" if isinstance(uptime, int | float) else ""
    lines.append(f"kioskd at {base}: {'READY' if ready else 'NOT READY'} (state {state}{up})")
    checks = readyz.get("checks") or (status or {}).get("checks") or {}
    if isinstance(checks, Mapping):
        for name, check in checks.items():
            ok = check.get("ok") if isinstance(check, Mapping) else bool(check)
            detail = check.get("detail", "") if isinstance(check, Mapping) else ""
            lines.append(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if status:
        devices = status.get("devices")
        if isinstance(devices, Mapping) and devices:
            lines.append("devices: " + ", ".join(f"{k} {v}" for k, v in devices.items()))
        spend = status.get("spend")
        if isinstance(spend, Mapping):
            parts = [f"today {_usd(spend.get('today_usd'))}"]
            if spend.get("daily_budget_usd"):
                parts[-1] += f" of {_usd(spend.get('daily_budget_usd'))}"
            if spend.get("session_usd") is not None:
                parts.append(f"this session {_usd(spend.get('session_usd'))}")
            lines.append("spend: " + ", ".join(parts))
        counters = status.get("counters")
        if isinstance(counters, Mapping) and counters:
            lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in counters.items()))
        lines.append(f"last error: {status.get('last_error') or 'none'}")
        vers = status.get("versions")
        if isinstance(vers, Mapping):
            lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    else:
        lines.append("(/status did not answer with JSON)")
    return "\n".join(lines)


def cli_status(args: argparse.Namespace, *, timeout_s: float = 5.0) -> int:
    """``kioskd status``: 0 when ready, 1 when not ready, 2 when the daemon cannot be reached."""
    try:
        base = _base_url(args)
    except StatusUsageError as exc:
        print(f"kioskd status: {exc}", file=sys.stderr)
        return EX_USAGE
    except HealthServerError as exc:
        print(f"kioskd status: {exc}", file=sys.stderr)
        return EX_UNREACHABLE
    try:
        ready_code, readyz = _fetch(f"{base}/readyz", timeout_s)
        if ready_code not in (200, 503) or not isinstance(readyz, Mapping):
            print(f"kioskd status: {base}/readyz answered HTTP {ready_code}, not kioskd's readiness report",
                  file=sys.stderr)
            return EX_UNREACHABLE
        status_code, status = _fetch(f"{base}/status", timeout_s)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"kioskd status: cannot reach {base}: {reason} (is kioskd running? try: systemctl status kioskd)",
              file=sys.stderr)
        return EX_UNREACHABLE
    ready = ready_code == 200
    shown = status if status_code == 200 and isinstance(status, Mapping) else None
    print(format_status(base, ready, readyz, shown))
    return EX_READY if ready else EX_NOT_READY
