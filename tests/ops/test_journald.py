"""Log lines reach a real journald with their structured fields, queryable as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.ops.fake_secrets import SECRET
from tests.ops.tools import assert_no_secret, require

DRIVERS = Path(__file__).parent / "drivers"
REPO = Path(__file__).resolve().parents[2]


def test_structured_fields_reach_the_real_journald() -> None:
    require("unshare", "util-linux")
    require("journalctl", "systemd")
    assert Path("/lib/systemd/systemd-journald").exists(), "needs systemd-journald (Debian package systemd)"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env.update(PYTHONPATH=str(REPO), TEST_KIOSKD_SECRET=SECRET)
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(DRIVERS / "standalone_journald.py"),
         str(DRIVERS / "journal_emitter.py")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert_no_secret(run.stdout + run.stderr)
    assert run.returncode == 0, run.stderr
    entries: list[dict[str, Any]] = [json.loads(line) for line in run.stdout.splitlines()]
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "kioskd"]
    assert len(ours) == 3, entries

    closes = [e for e in ours if e.get("KIOSKD_EVENT") == "session_close"]
    assert len(closes) == 1
    close = closes[0]
    assert close["MESSAGE"] == "session closed after 12.3 s", "the message alone, no level prefix"
    assert (close["SESSION_ID"], close["COST_USD"], close["PRIORITY"]) == ("s-42", "0.0123", "6")
    assert close["LOGGER"] == "kioskd.daemon"

    error = next(e for e in ours if e.get("KIOSKD_EVENT") == "error")
    assert error["PRIORITY"] == "4" and error["CODE"] == "401"
    assert error["MESSAGE"] == "the service refused key [redacted]"

    plain = next(e for e in ours if "KIOSKD_EVENT" not in e)
    assert not any(key.islower() for key in plain), "journald keeps only UPPER_CASE fields"
