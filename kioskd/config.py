"""kioskd settings: one pydantic model per section, read from TOML and the environment.

Sources, later ones win:

1. the defaults below (they are the reference: ``config/kioskd.toml`` repeats them with comments);
2. the TOML file (``--config``, default ``/etc/kioskd/kioskd.toml``; a missing default file is an empty one);
3. the seed's variables ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_DEPLOYMENT_NAME``, ``AZURE_OPENAI_API_KEY``;
4. ``KIOSKD_<SECTION>__<KEY>`` variables (e.g. ``KIOSKD_HEALTH__PORT=9000``; lists as JSON);
5. the systemd credential ``$CREDENTIALS_DIRECTORY/azure-openai-api-key`` fills ``realtime.api_key`` when
   nothing above set it.

Parsing and validation are pydantic's and tomllib's; the overlay of the environment is small enough to be
written out here, where it can say exactly which variable a bad value came from.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from kioskd.realtime.endpoint import EndpointError, build_realtime_url, is_loopback_host

DEFAULT_CONFIG_PATH = Path("/etc/kioskd/kioskd.toml")
CREDENTIAL_NAME = "azure-openai-api-key"
EX_CONFIG = 78
ENV_PREFIX = "KIOSKD_"
SEED_ENV = {
    "AZURE_OPENAI_ENDPOINT": ("realtime", "endpoint"),
    "AZURE_OPENAI_DEPLOYMENT_NAME": ("realtime", "deployment"),
    "AZURE_OPENAI_API_KEY": ("realtime", "api_key"),
}
# The hard cap Azure puts on one realtime session; max_session_s must stay below it.
AZURE_SESSION_CAP_S = 30 * 60
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Device = str | Annotated[int, Field(ge=0)]


class AudioConfig(_Section):
    input_device: Device = "default"
    output_device: Device = "default"
    input_channels: int = Field(1, ge=1, le=32)
    use_channels: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    input_rate: int | None = Field(None, ge=8000, le=192000, description="None: the device's default rate")
    output_rate: int | None = Field(None, ge=8000, le=192000)
    block_ms: int = Field(20, ge=5, le=100)
    jitter_target_ms: int = Field(60, ge=0, le=1000)
    capture_queue_blocks: int = Field(100, ge=4, le=10000)
    echo_cancellation: Literal["off", "builtin", "system"] = "builtin"
    echo_delay_ms: int = Field(40, ge=0, le=500)
    echo_onset_guard_ms: int = Field(1250, ge=0, le=3000, description="with builtin cancellation, gate the first "
                                     "ms of playback after a pause, while the canceller re-locks")
    echo_gate: Literal["off", "on"] = "off"
    echo_gate_db: float = Field(0.0, ge=-60.0, le=30.0, description="while playing, the uplink must exceed "
                                "the playback level by this much to pass the echo gate")
    earcon_volume: float = Field(0.5, ge=0.0, le=1.0)
    wake_chime: Path | None = None
    end_chime: Path | None = None
    error_tone: Path | None = None
    budget_tone: Path | None = None
    reopen_backoff_s: float = Field(1.0, gt=0, le=60)
    reopen_backoff_max_s: float = Field(30.0, gt=0, le=600)



class WakeConfig(_Section):
    models: list[str] = Field(default_factory=lambda: ["hey_jarvis"], min_length=1)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    refractory_s: float = Field(2.0, ge=0.0, le=60.0)
    vad_threshold: float = Field(0.0, ge=0.0, lt=1.0, description="0 turns openWakeWord's VAD gate off")
    silence_gate_dbfs: float | None = Field(
        -60.0, le=0.0, description="skip inference on blocks quieter than this; None runs it always"
    )


class RealtimeConfig(_Section):
    endpoint: str = ""
    deployment: str = "gpt-realtime-1.5"
    auth: Literal["api-key", "entra"] = "api-key"
    api_key: SecretStr = SecretStr("")
    entra_scope: str = "https://cognitiveservices.azure.com/.default"
    voice: Literal[VOICES] = "marin"  # type: ignore[valid-type]
    instructions: str = "You are the voice of this kiosk. Answer briefly."
    turn_detection: Literal["server_vad", "semantic_vad"] = "server_vad"
    vad_threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=2000)
    silence_duration_ms: int = Field(500, ge=100, le=5000)
    semantic_eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    noise_reduction: Literal["off", "near_field", "far_field"] = "far_field"
    transcription_model: str | None = Field(None, description="e.g. whisper-1; None: no user transcript")
    max_output_tokens: int | Literal["inf"] = 1024
    connect_timeout_s: float = Field(10.0, gt=0, le=120)
    setup_timeout_s: float = Field(10.0, gt=0, le=120)

    @field_validator("max_output_tokens")
    @classmethod
    def _tokens_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("must be between 1 and 4096, or \"inf\"")
        return v

    @property
    def url(self) -> str:
        return build_realtime_url(self.endpoint, self.deployment).url


class SessionConfig(_Section):
    idle_timeout_s: float = Field(8.0, gt=0, le=600)
    max_session_s: float = Field(600.0, gt=0, lt=AZURE_SESSION_CAP_S)
    preroll_s: float = Field(2.0, ge=0.5, le=10.0)
    connect_backoff_s: float = Field(2.0, ge=0, le=300)
    connect_backoff_max_s: float = Field(60.0, ge=0, le=3600)


class Prices(_Section):
    """USD per 1M tokens (gpt-realtime-1.5 list prices by default)."""

    audio_in: float = Field(32.0, ge=0)
    audio_cached_in: float = Field(0.40, ge=0)
    audio_out: float = Field(64.0, ge=0)
    text_in: float = Field(4.0, ge=0)
    text_cached_in: float = Field(0.40, ge=0)
    text_out: float = Field(16.0, ge=0)


class BudgetConfig(_Section):
    daily_usd: float = Field(5.0, ge=0)
    session_usd: float = Field(0.50, ge=0)
    state_dir: Path = Path("/var/lib/kioskd")
    prices: Prices = Field(default_factory=Prices)


class HealthConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)

    @field_validator("host")
    @classmethod
    def _host_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an address, e.g. 127.0.0.1")
        return v

    @property
    def loopback_only(self) -> bool:
        return is_loopback_host(self.host)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    audio: AudioConfig = Field(default_factory=AudioConfig)
    wake: WakeConfig = Field(default_factory=WakeConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def cross_field_problems(settings: Settings) -> list[str]:
    """Rules that join several keys; each line names the key to change."""
    problems = []
    audio, rt = settings.audio, settings.realtime
    bad = [c for c in audio.use_channels if c >= audio.input_channels]
    if bad:
        problems.append(
            f"audio.use_channels: {bad} do not exist on a device with input_channels={audio.input_channels} "
            "(channels count from 0)"
        )
    try:
        endpoint = build_realtime_url(rt.endpoint, rt.deployment)
    except EndpointError as exc:
        problems.append(f"realtime.endpoint: {exc}")
    else:
        if rt.auth == "api-key" and not rt.api_key.get_secret_value() and not endpoint.is_loopback:
            problems.append(
                "realtime.api_key: is empty: set AZURE_OPENAI_API_KEY, realtime.api_key or the systemd "
                f"credential {CREDENTIAL_NAME!r}, or use auth = \"entra\""
            )
    if settings.session.connect_backoff_max_s < settings.session.connect_backoff_s:
        problems.append("session.connect_backoff_max_s: must not be below session.connect_backoff_s")
    if audio.reopen_backoff_max_s < audio.reopen_backoff_s:
        problems.append("audio.reopen_backoff_max_s: must not be below audio.reopen_backoff_s")
    return problems


class ConfigError(Exception):
    """One or more problems with the configuration, each naming the field it concerns."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    return raw


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The settings given by environment variables, and problems with their names."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    for name, (section, key) in SEED_ENV.items():
        if environ.get(name):
            data.setdefault(section, {})[key] = environ[name]
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) < 2 or not all(path):
            problems.append(f"{name}: not a setting; write KIOSKD_<SECTION>__<KEY>, e.g. KIOSKD_HEALTH__PORT")
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _env_value(raw)
    return data, problems


def _credential(environ: Mapping[str, str]) -> str | None:
    """The API key from systemd's credential directory, if one was passed; ValueError if unreadable."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL_NAME
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"realtime.api_key: the systemd credential {path} cannot be read: {reason}") from None


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see config/kioskd.toml for the keys there are)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{loc or '(top level)'}: {msg}")
    return lines


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, merge and validate; raise ConfigError with every problem found."""
    env = os.environ if environ is None else environ
    file_path = DEFAULT_CONFIG_PATH if path is None else path
    data: dict[str, Any] = {}
    problems: list[str] = []
    try:
        with open(file_path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if path is not None:
            problems.append(f"{file_path}: no such file")
    except PermissionError:
        problems.append(f"{file_path}: permission denied")
    except IsADirectoryError:
        problems.append(f"{file_path}: is a directory, not a TOML file")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{file_path}: not valid TOML: {exc}")
    except UnicodeDecodeError:
        problems.append(f"{file_path}: not valid TOML: not UTF-8 text")
    if problems:  # an unreadable file: say only that, the rest would be noise
        raise ConfigError(problems)
    from_env, env_problems = env_overrides(env)
    problems += env_problems
    data = deep_merge(data, from_env)
    if overrides:
        data = deep_merge(data, overrides)
    realtime = data.get("realtime")
    if not (isinstance(realtime, dict) and realtime.get("api_key")):
        try:
            secret = _credential(env)
        except ValueError as exc:
            raise ConfigError([*problems, str(exc)]) from None
        if secret:
            data.setdefault("realtime", {})
            if isinstance(data["realtime"], dict):
                data["realtime"]["api_key"] = secret
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(problems + _format_errors(exc)) from None
    problems += cross_field_problems(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def report_problems(problems: Sequence[str], where: object = None) -> int:
    """Print one line per problem to stderr, in the form every command uses; return EX_CONFIG (78)."""
    print(f"kioskd: configuration{f' {where}' if where else ''} is not valid:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return EX_CONFIG


def load_or_exit(path: Path | None) -> Settings:
    """:func:`load_settings`, or the problems printed and exit 78 (which systemd does not restart)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        raise SystemExit(report_problems(exc.problems, path or DEFAULT_CONFIG_PATH)) from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def render_effective(settings: Settings) -> str:
    """The effective configuration as TOML, secrets replaced by a mask."""
    lines: list[str] = []

    def section(prefix: str, model: BaseModel) -> None:
        nested: list[tuple[str, BaseModel]] = []
        lines.append(f"[{prefix}]")
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                nested.append((f"{prefix}.{name}", value))
            elif isinstance(value, SecretStr):
                lines.append(f"{name} = {json.dumps('********' if value.get_secret_value() else '')}")
            elif value is not None:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
        for sub_prefix, sub in nested:
            section(sub_prefix, sub)

    for name in Settings.model_fields:
        section(name, getattr(settings, name))
    return "\n".join(lines)
