"""External programs the ops tests run, and a clear failure (not a skip) when one is missing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.ops.fake_secrets import SECRET


def require(program: str, debian_package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/lib/systemd")
    if path is None:
        pytest.fail(f"{program} is needed: apt-get install {debian_package} (scripts/bootstrap installs it)")
    return path


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """``promtool check metrics`` on an exposition (it lints names, types, help and units)."""
    return subprocess.run(
        [require("promtool", "prometheus"), "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_secret(text: str, secret: str | None = None) -> None:
    """Fail if ``secret`` occurs in ``text``, without printing either (the failure must not leak it)."""
    leaked = (secret or SECRET) in text
    if leaked:
        pytest.fail("a secret appeared in the output (not shown here)", pytrace=False)
