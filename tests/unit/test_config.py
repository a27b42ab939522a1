"""Configuration: what an operator writes, what kioskd makes of it, and how it says no."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kioskd.config import EX_CONFIG, ConfigError, load_settings, render_effective
from kioskd.realtime.endpoint import EndpointError, build_realtime_url

REPO = Path(__file__).resolve().parents[2]
SEED = {
    "AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com",
    "AZURE_OPENAI_DEPLOYMENT_NAME": "rt15",
    "AZURE_OPENAI_API_KEY": "k3y-s3cr3t-value-0123456789",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kioskd.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kioskd", *args], check=False, capture_output=True,
                          text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=REPO, timeout=60)


def test_empty_file_plus_seed_variables_is_valid(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""), SEED)
    assert s.realtime.url == "wss://contoso.openai.azure.com/openai/v1/realtime?model=rt15"
    assert s.realtime.api_key.get_secret_value() == SEED["AZURE_OPENAI_API_KEY"]
    assert s.session.idle_timeout_s == 8
    assert s.health.host == "127.0.0.1" and s.health.port == 8787


def test_kioskd_variables_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[health]\nport = 1000\n[wake]\nmodels = ['alexa']\n")
    env = {**SEED, "KIOSKD_HEALTH__PORT": "9000", "KIOSKD_WAKE__MODELS": '["hey_jarvis", "alexa"]',
           "KIOSKD_REALTIME__DEPLOYMENT": "other"}
    s = load_settings(path, env)
    assert s.health.port == 9000
    assert s.wake.models == ["hey_jarvis", "alexa"]
    assert s.realtime.deployment == "other"  # the specific variable wins over the seed's


def test_api_key_from_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "azure-openai-api-key").write_text("from-credential-key\n")
    env = {"AZURE_OPENAI_ENDPOINT": SEED["AZURE_OPENAI_ENDPOINT"], "CREDENTIALS_DIRECTORY": str(creds)}
    s = load_settings(write(tmp_path, ""), env)
    assert s.realtime.api_key.get_secret_value() == "from-credential-key"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[realtime]\nfoo = 1\n", "realtime.foo: unknown key"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
        ("[health]\nport = 'abc'\n", "health.port: Input should be a valid integer"),
        ("[health]\nport = 70000\n", "health.port: Input should be less than or equal to 65535"),
        ("[wake]\nthreshold = 1.5\n", "wake.threshold: Input should be less than 1"),
        ("[session]\nmax_session_s = 1800\n", "session.max_session_s: Input should be less than 1800"),
        ("[audio]\ninput_channels = 4\nuse_channels = [4]\n", "audio.use_channels: [4] do not exist"),
        ("[realtime]\nvoice = 'nova'\n", "realtime.voice: Input should be"),
        ("[realtime\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml), SEED)
    assert any(expected in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://contoso.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=x",
         "api-version"),
        ("https://contoso.openai.azure.com/openai/realtime", "preview"),
        ("http://contoso.openai.azure.com", "not a loopback"),
        ("ws://10.0.0.5:9000", "not a loopback"),
        ("contoso.openai.azure.com", "no scheme"),
        ("https://contoso.openai.azure.com/some/other/path", "not a realtime path"),
    ],
)
def test_bad_endpoints_are_refused_with_a_reason(tmp_path: Path, endpoint: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""), {**SEED, "AZURE_OPENAI_ENDPOINT": endpoint})
    assert any(p.startswith("realtime.endpoint:") and expected in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("https://contoso.openai.azure.com", "wss://contoso.openai.azure.com/openai/v1/realtime?model=dep"),
        ("https://contoso.openai.azure.com/", "wss://contoso.openai.azure.com/openai/v1/realtime?model=dep"),
        ("https://contoso.openai.azure.com/openai/v1/",
         "wss://contoso.openai.azure.com/openai/v1/realtime?model=dep"),
        ("wss://contoso.openai.azure.com/openai/v1/realtime?model=old",
         "wss://contoso.openai.azure.com/openai/v1/realtime?model=dep"),
        ("https://proj.services.ai.azure.com/openai/v1",
         "wss://proj.services.ai.azure.com/openai/v1/realtime?model=dep"),
        ("https://res-eastus2.cognitiveservices.azure.com",
         "wss://res-eastus2.cognitiveservices.azure.com/openai/v1/realtime?model=dep"),
        ("wss://api.openai.com/v1/realtime?model=gpt-realtime", "wss://api.openai.com/v1/realtime?model=dep"),
        ("ws://127.0.0.1:8765", "ws://127.0.0.1:8765/openai/v1/realtime?model=dep"),
        ("http://localhost:8765/openai/v1", "ws://localhost:8765/openai/v1/realtime?model=dep"),
    ],
)
def test_endpoint_forms_normalise_to_the_ga_url(endpoint: str, url: str) -> None:
    assert build_realtime_url(endpoint, "dep").url == url


def test_credentials_in_the_url_are_never_carried_over() -> None:
    assert "user" not in build_realtime_url("https://user:pw@contoso.openai.azure.com", "d").url
    with pytest.raises(EndpointError):
        build_realtime_url("https://contoso.openai.azure.com", " ")


def test_missing_key_for_azure_is_an_error_but_not_for_the_local_simulator(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""), {"AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com"})
    assert any(p.startswith("realtime.api_key:") for p in info.value.problems)
    s = load_settings(write(tmp_path, ""), {"AZURE_OPENAI_ENDPOINT": "ws://127.0.0.1:9"})
    assert s.realtime.url.startswith("ws://127.0.0.1:9/")
    entra = load_settings(write(tmp_path, "[realtime]\nauth = 'entra'\n"),
                          {"AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com"})
    assert entra.realtime.auth == "entra"


def test_effective_config_masks_the_key(tmp_path: Path) -> None:
    text = render_effective(load_settings(write(tmp_path, ""), SEED))
    assert SEED["AZURE_OPENAI_API_KEY"] not in text
    assert 'api_key = "********"' in text


def test_check_config_cli_good_and_bad(tmp_path: Path) -> None:
    good = run_cli("check-config", "--config", str(write(tmp_path, "")), env=SEED)
    assert good.returncode == 0, good.stderr
    assert "[realtime]" in good.stdout and SEED["AZURE_OPENAI_API_KEY"] not in good.stdout + good.stderr

    bad_path = tmp_path / "bad.toml"
    bad_path.write_text("[health]\nport = 'x'\n[realtime]\nendpoint = 'http://evil.example.com'\nfoo = 2\n")
    bad = run_cli("check-config", "--config", str(bad_path), env=SEED)
    assert bad.returncode == EX_CONFIG
    assert "health.port:" in bad.stderr and "realtime.foo: unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert SEED["AZURE_OPENAI_API_KEY"] not in bad.stdout + bad.stderr


def test_shipped_example_config_is_valid_and_lists_every_key() -> None:
    example = REPO / "config" / "kioskd.toml"
    s = load_settings(example, SEED)
    text = example.read_text()
    rendered = render_effective(s)
    for line in rendered.splitlines():
        if "=" in line:
            key = line.split("=", 1)[0].strip()
            assert f"{key} =" in text or f"# {key} =" in text, f"config/kioskd.toml does not document {key}"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "nope.toml"), env=SEED)
    assert result.returncode == EX_CONFIG and "no such file" in result.stderr
