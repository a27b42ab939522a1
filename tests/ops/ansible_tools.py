"""ansible-core, community.general and ansible-lint in a virtualenv of their own, made on first use.

They are heavy (about 570 MB with the collections) and their pins are not kioskd's, so they live outside
.venv, in a cache directory that survives between runs on the same machine (TEST_KIOSKD_ANSIBLE_VENV to move
it). The first run installs them from PyPI; later runs reuse them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_PINS = ("ansible==12.3.0", "ansible-lint==26.10.1")  # ansible 12.3 = ansible-core 2.19 + collections
CACHE = Path(os.environ.get("TEST_KIOSKD_CACHE", "/var/cache/kioskd-test"))
VENV = Path(os.environ.get("TEST_KIOSKD_ANSIBLE_VENV", CACHE / "ansible-venv"))
ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
INSTALL_TIMEOUT_S = 1200


def ansible_venv() -> Path:
    """The tools' bin directory, installing them first when missing."""
    stamp = VENV / ".kioskd-pins"
    want = "\n".join(ANSIBLE_PINS)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".ansible-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == want):
            steps = [] if (VENV / "bin" / "python").exists() else [[sys.executable, "-m", "venv", str(VENV)]]
            steps.append([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *ANSIBLE_PINS])
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
                if done.returncode != 0:
                    pytest.fail(f"could not install the Ansible tools into {VENV}: {done.stderr[-2000:]}")
            stamp.write_text(want)
    return VENV / "bin"


def ansible_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PY_COLORS="0",
        **extra,
    )
    return env


def run_ansible(bin_dir: Path, program: str, *args: str, cwd: Path = ANSIBLE_DIR, timeout_s: float = 300,
                **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / program), *args], cwd=cwd, env=ansible_env(bin_dir, **env),
                          capture_output=True, text=True, timeout=timeout_s, check=False)
