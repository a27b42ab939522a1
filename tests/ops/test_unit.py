"""systemd/kioskd.service: what systemd itself says about it (verify, security), and the promised settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.tools import require

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "kioskd.service"
MAX_EXPOSURE = 2.5


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order; systemd keeps repeated keys, so a dict of lists."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart= pointing at an executable that exists here (verify checks that)."""
    body = UNIT.read_text() if text is None else text
    body = body.replace("ExecStart=/opt/kioskd/venv/bin/kioskd", f"ExecStart={sys.executable} -m kioskd")
    path = tmp_path / "kioskd.service"  # verify wants the real unit name
    path.write_text(body)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("systemd-analyze", "systemd"), "verify", "--man=no", path.name],
                          cwd=path.parent, capture_output=True, text=True, timeout=120, check=False)


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    result = verify(local_copy(tmp_path))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_check_does_catch_a_mistake(tmp_path: Path) -> None:
    planted = UNIT.read_text().replace("WatchdogSec=30s", "WatchdogSecs=30s")
    result = verify(local_copy(tmp_path, planted))
    assert "Unknown key 'WatchdogSecs'" in result.stderr  # while the exit code is still 0: read stderr


def test_security_exposure_at_most_2_5(tmp_path: Path) -> None:
    path = local_copy(tmp_path)
    result = subprocess.run(
        [require("systemd-analyze", "systemd"), "security", "--offline=yes", f"--threshold={MAX_EXPOSURE * 10:.0f}",
         "--no-pager", path.name],
        cwd=path.parent, capture_output=True, text=True, timeout=120, check=False,
    )
    match = re.search(r"Overall exposure level for kioskd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_settings_the_daemon_and_role_rely_on() -> None:
    s = unit_settings(UNIT.read_text())

    def one(section: str, key: str) -> str:
        values = s.get((section, key), [])
        assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
        return values[0]

    assert one("Service", "Type") == "notify" and one("Service", "NotifyAccess") == "main"
    assert one("Service", "ExecStart") == "/opt/kioskd/venv/bin/kioskd run --config /etc/kioskd/kioskd.toml"
    assert one("Service", "WatchdogSec") == "30s"
    assert one("Service", "Restart") == "on-failure" and one("Service", "RestartPreventExitStatus") == "78"
    assert one("Unit", "StartLimitIntervalSec") and one("Unit", "StartLimitBurst")
    assert one("Service", "User") == "kioskd" and one("Service", "SupplementaryGroups") == "audio"
    for directory in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one("Service", directory) == "kioskd"
    assert one("Service", "LoadCredential") == (
        "azure-openai-api-key:/etc/credstore/kioskd.azure-openai-api-key"
    ), "the name config.py reads from $CREDENTIALS_DIRECTORY"
    assert "LoadCredentialEncrypted=azure-openai-api-key:" in UNIT.read_text(), "documented in a comment"
    assert "PYTHONFAULTHANDLER=1" in one("Service", "Environment").split()
    assert one("Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", ["azure-openai-api-key"])
def test_credential_name_matches_the_config_loader(name: str) -> None:
    from kioskd.config import CREDENTIAL_NAME

    assert name == CREDENTIAL_NAME
