"""Run the real systemd-journald with no systemd as PID 1, log into it, print the journal as JSON lines.

Must run inside a private mount namespace (``unshare -m --propagation private``): it mounts tmpfs over
/run/systemd, /run/log and /var/log/journal there, so the host's journal and sockets are never touched.
libsystemd always writes to the fixed /run/systemd/journal/socket, which is why the mounts are needed.

Usage: standalone_journald.py EMITTER_ARGS...  (run with this Python, JOURNAL_STREAM set for it)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

JOURNALD = "/lib/systemd/systemd-journald"
SOCKET = Path("/run/systemd/journal/socket")
WAIT_S = 20.0


def mount_tmpfs(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)


def wait_for(what: str, ready: object, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"standalone journald: {what} did not happen within {timeout_s} s")
        time.sleep(0.05)


def journal(*matches: str) -> list[str]:
    out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json", "--no-pager", *matches],
                         capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.strip()]


def main(emitter: list[str]) -> int:
    for path in ("/run/systemd", "/run/log", "/var/log/journal"):
        mount_tmpfs(path)
    os.makedirs(SOCKET.parent, exist_ok=True)
    journald = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for("journald's socket appearing", SOCKET.exists)
        env = dict(os.environ, JOURNAL_STREAM="8:12345")  # what systemd sets for a service's stdout
        subprocess.run([sys.executable, *emitter], env=env, check=True, timeout=60)
        wait_for("the plain line reaching the journal", lambda: journal("MESSAGE=a plain line"))
        for line in journal():
            print(line)
    finally:
        journald.terminate()
        journald.wait(timeout=WAIT_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
