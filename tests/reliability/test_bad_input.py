"""Everything a person can type or hand over, wrong: a clear message, a non-zero exit, never a traceback.

Each case runs ``python -m kioskd`` as a subprocess, exactly as an operator would, with an environment
cleaned of any ``KIOSKD_*`` / ``AZURE_OPENAI_*`` variables of the machine running the tests, and checks
the exit status, that the message names what is wrong, and that no Python traceback reached the terminal.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import wave
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EX_USAGE, EX_CONFIG, EX_WAKE_INPUT = 64, 78, 2
ENDPOINT = "https://contoso-kiosk.openai.azure.com"
GOOD_ENV = {"AZURE_OPENAI_ENDPOINT": ENDPOINT, "AZURE_OPENAI_API_KEY": "bad-input-test-key-1234"}
MEMORY_LIMIT = 3 * 1024**3  # a runaway allocation must fail in the child, never swap the test machine


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def kioskd(*args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 90) -> Run:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KIOSKD_", "AZURE_OPENAI_", "CREDENTIALS_"))}
    result = subprocess.run(
        [sys.executable, "-m", "kioskd", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, preexec_fn=_limit_memory, check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def assert_refused(run: Run, status: int, *fragments: str) -> None:
    assert "Traceback" not in run.text, run.text
    assert run.status == status, f"exit {run.status}, wanted {status}:\n{run.text}"
    for fragment in fragments:
        assert fragment in run.err, f"{fragment!r} not in:\n{run.err}"


# -- configuration files -------------------------------------------------------------------------------

CONFIGS = {
    "toml_syntax": ("[audio\nblock_ms = 20\n", ["not valid TOML"]),
    "wrong_type": ('[health]\nport = "eighty"\n', ["health.port", "integer"]),
    "out_of_range": ("[audio]\nblock_ms = 1000\n", ["audio.block_ms"]),
    "unknown_key": ("[audio]\nblock_size = 20\n", ["audio.block_size", "unknown key"]),
    "unknown_section": ("[speakers]\nvolume = 3\n", ["speakers", "unknown key"]),
    "bad_choice": ('[realtime]\nvoice = "robot"\n', ["realtime.voice"]),
    "missing_channel": ("[audio]\ninput_channels = 2\nuse_channels = [0, 5]\n", ["audio.use_channels", "[5]"]),
    "negative_budget": ("[budget]\ndaily_usd = -1\n", ["budget.daily_usd"]),
    "session_over_azure_cap": ("[session]\nmax_session_s = 3600\n", ["session.max_session_s"]),
    "preview_endpoint": (f'[realtime]\nendpoint = "{ENDPOINT}/openai/realtime?api-version=2024-10-01-preview"\n',
                         ["realtime.endpoint", "api-version"]),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_bad_config_file_is_named_line_by_line(case: str, tmp_path: Path) -> None:
    text, fragments = CONFIGS[case]
    config = tmp_path / "kioskd.toml"
    config.write_text(text)
    # The environment overrides the file: a case about the file's endpoint must not set the variable too.
    env = {k: v for k, v in GOOD_ENV.items() if not (k == "AZURE_OPENAI_ENDPOINT" and "endpoint" in text)}
    assert_refused(kioskd("check-config", "--config", config, cwd=tmp_path, env=env), EX_CONFIG, *fragments)


def test_config_files_that_cannot_be_read(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[audio]\x00")
    assert_refused(kioskd("check-config", "--config", binary, cwd=tmp_path), EX_CONFIG, "not UTF-8")
    assert_refused(kioskd("check-config", "--config", tmp_path, cwd=tmp_path), EX_CONFIG, "is a directory")
    missing = tmp_path / "nowhere.toml"
    assert_refused(kioskd("run", "--config", missing, cwd=tmp_path), EX_CONFIG, "no such file")


def test_an_empty_config_without_the_azure_variables_says_what_is_missing(tmp_path: Path) -> None:
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    assert_refused(kioskd("check-config", "--config", config, cwd=tmp_path), EX_CONFIG, "realtime.endpoint")


# -- the environment ----------------------------------------------------------------------------------

ENVIRONMENTS = {
    "port_not_a_number": ({"KIOSKD_HEALTH__PORT": "eighty"}, ["health.port"]),
    "list_not_json": ({"KIOSKD_AUDIO__USE_CHANNELS": "[0,"}, ["audio.use_channels"]),
    "threshold_out_of_range": ({"KIOSKD_WAKE__THRESHOLD": "1.5"}, ["wake.threshold"]),
    "not_a_setting": ({"KIOSKD_LOUDNESS": "11"}, ["KIOSKD_LOUDNESS", "not a setting"]),
    "unknown_key": ({"KIOSKD_AUDIO__NOPE": "1"}, ["audio.nope", "unknown key"]),
    "bad_log_level": ({"KIOSKD_LOGGING__LEVEL": "loud"}, ["logging.level"]),
    "preview_endpoint": ({"AZURE_OPENAI_ENDPOINT": f"{ENDPOINT}/openai/realtime?api-version=2025-04-01-preview"},
                         ["realtime.endpoint", "api-version"]),
    "endpoint_not_a_url": ({"AZURE_OPENAI_ENDPOINT": "my kiosk resource"}, ["realtime.endpoint"]),
}


@pytest.mark.parametrize("case", sorted(ENVIRONMENTS))
def test_a_bad_environment_variable_is_named(case: str, tmp_path: Path) -> None:
    env, fragments = ENVIRONMENTS[case]
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    assert_refused(kioskd("check-config", "--config", config, cwd=tmp_path, env={**GOOD_ENV, **env}),
                   EX_CONFIG, *fragments)


def test_the_daemon_itself_refuses_a_bad_environment_before_touching_any_device(tmp_path: Path) -> None:
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    env = {**GOOD_ENV, "KIOSKD_AUDIO__BLOCK_MS": "0"}
    assert_refused(kioskd("run", "--config", config, cwd=tmp_path, env=env), EX_CONFIG, "audio.block_ms")


@pytest.mark.parametrize("kind", ["directory", "not_utf8"])
def test_an_unreadable_systemd_credential_is_a_config_error(kind: str, tmp_path: Path) -> None:
    """``$CREDENTIALS_DIRECTORY/azure-openai-api-key`` that is a directory, or not text: say so, no traceback."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret = credentials / "azure-openai-api-key"
    if kind == "directory":
        secret.mkdir()
    else:
        secret.write_bytes(b"\xff\xfe\xfa key")
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    env = {"AZURE_OPENAI_ENDPOINT": ENDPOINT, "CREDENTIALS_DIRECTORY": str(credentials)}
    assert_refused(kioskd("check-config", "--config", config, cwd=tmp_path, env=env), EX_CONFIG,
                   "azure-openai-api-key")


# -- command-line flags -------------------------------------------------------------------------------

FLAGS = {
    "unknown_command": (["frobnicate"], EX_USAGE, "invalid choice"),
    "no_command": ([], EX_USAGE, "required"),
    "threshold_not_a_number": (["wake-test", "x.wav", "--threshold", "abc"], EX_USAGE, "invalid float value"),
    "threshold_out_of_range": (["wake-test", "{wav}", "--threshold", "1.5"], EX_WAKE_INPUT, "threshold"),
    "unknown_wake_model": (["wake-test", "{wav}", "--model", "hey_computer"], EX_WAKE_INPUT, "unknown wake model"),
    "tflite_model": (["wake-test", "{wav}", "--model", "model.tflite"], EX_WAKE_INPUT, ".onnx"),
    "port_not_a_number": (["sim", "--port", "abc"], EX_USAGE, "invalid int value"),
    "port_out_of_range": (["sim", "--port", "70000"], 2, "not a TCP port"),
    "sim_on_a_public_address": (["sim", "--host", "192.0.2.7"], 2, "not a loopback address"),
    "status_of_nothing": (["status", "--url", "http://127.0.0.1:9"], 2, "cannot reach"),
    "demo_input_missing": (["demo", "--input", "nowhere.wav"], 2, "no such file"),
}


@pytest.mark.parametrize("case", sorted(FLAGS))
def test_bad_flags(case: str, tmp_path: Path) -> None:
    args, status, fragment = FLAGS[case]
    wav = tmp_path / "silence.wav"
    _write_wav(wav, np.zeros(16_000, dtype=np.int16), 16_000)
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    argv = [a.format(wav=wav) for a in args]
    if argv[:1] in (["wake-test"], ["demo"]):
        argv += ["--config", str(config)]
    run = kioskd(*argv, cwd=tmp_path, env=GOOD_ENV)
    assert "Traceback" not in run.text, run.text
    assert run.status == status, run.text
    assert fragment in run.text, run.text


# -- WAV files for ``kioskd wake-test`` ------------------------------------------------------------------

def _write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


def _bad_wav(kind: str, path: Path) -> None:
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "text_file":
        path.write_text("hello, I am not a WAV file\n")
    elif kind in ("truncated", "header_only"):
        _write_wav(path, np.zeros(16_000, dtype=np.int16), 16_000)
        path.write_bytes(path.read_bytes()[: 44 + (400 if kind == "truncated" else 0)])
    elif kind == "no_samples":
        _write_wav(path, np.zeros(0, dtype=np.int16), 16_000)
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass


@pytest.mark.parametrize("kind", ["empty_file", "text_file", "truncated", "header_only", "no_samples",
                                  "directory", "missing"])
def test_wake_test_on_a_file_that_is_not_usable_audio(kind: str, tmp_path: Path) -> None:
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    wav = tmp_path / "clip.wav"
    _bad_wav(kind, wav)
    run = kioskd("wake-test", wav, "--config", config, cwd=tmp_path)
    assert_refused(run, EX_WAKE_INPUT, str(wav))


def test_wake_test_on_a_file_with_an_absurd_sample_rate(tmp_path: Path) -> None:
    """A header claiming 2 GHz: refuse it clearly instead of allocating gigabytes of padding (or dying)."""
    config = tmp_path / "kioskd.toml"
    config.write_text("")
    wav = tmp_path / "absurd.wav"
    _write_wav(wav, np.zeros(1600, dtype=np.int16), 2**31 - 1)
    run = kioskd("wake-test", wav, "--config", config, cwd=tmp_path)
    assert_refused(run, EX_WAKE_INPUT, str(wav))
