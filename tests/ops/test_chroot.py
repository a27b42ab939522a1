"""The role run for real against a Debian tree, then that tree booted under its own systemd.

About 100 s with warm caches (several minutes on the first run: debootstrap, PyPI downloads), so it runs
only when asked: ``TEST_KIOSKD_CHROOT=1 .venv/bin/pytest tests/ops/test_chroot.py`` (as root).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.ops.chroot_harness import CACHE, TEST_KEY, HarnessError, Report, provision

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("TEST_KIOSKD_CHROOT") != "1",
                       reason="the full provisioning run takes minutes; set TEST_KIOSKD_CHROOT=1 to run it"),
]


def test_role_provisions_a_bare_debian_and_the_unit_runs_under_systemd() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (debootstrap, chroot, mounts)")
    for program in ("debootstrap", "systemd-nspawn", "unshare", "nsenter"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is needed: apt-get install debootstrap systemd-container")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
    try:
        report = provision(work, Report(), boot=True)
    except HarnessError as exc:
        pytest.fail(str(exc).replace(TEST_KEY, "[redacted]"), pytrace=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first, second = report.recaps
    assert first["failed"] == 0 and first["changed"] > 0
    assert (second["failed"], second["changed"]) == (0, 0), "the second run must change nothing"
    checks = report.checks
    assert checks["is-enabled"] == "enabled"
    assert "audio" in checks["groups"].split()
    assert checks["credential"] == "600 root:root" and checks["config_dir"] == "750 root:kioskd"
    assert checks["imports"] == "ok" and checks["verify"] == "(silent)"
    unit = dict(item.split("=", 1) for item in checks["unit"].split(" ") if "=" in item)
    assert (unit["ActiveState"], unit["SubState"], unit["NRestarts"]) == ("active", "running", "0")
    assert unit["WatchdogUSec"] == "30s"
    readyz = json.loads(checks["readyz"])
    assert readyz["status"] == "ready", readyz
    assert readyz["checks"]["credentials"]["ok"] and readyz["checks"]["read_only_system"]["ok"]
    assert json.loads(checks["journal_fields"]) == [{"KIOSKD_EVENT": "ready", "SESSION_ID": "probe", "COST_USD": "0"}]
    assert checks["key_in_journal"] == "False"
