"""``kioskd run`` as a child process on the audio rig, with everything it prints kept for inspection.

The security checks look at what an operator would see: the process's own output (its log lines at debug
level), the health endpoint's answers, the files it writes. This runs the real entry point, as systemd would,
and stops it with SIGTERM by its PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.rig import wait_until

ROOT = Path(__file__).resolve().parents[2]
# Variables of the machine running the tests that would change what the child does.
_DROPPED_PREFIXES = ("KIOSKD_", "AZURE_", "IDENTITY_", "MSI_", "IMDS_", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM",
                     "NOTIFY_SOCKET")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a TCP socket listening on ``port`` (from ``/proc/net/tcp*``)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as fh:
            next(fh)
            for line in fh:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


class DaemonProcess:
    """``python -m kioskd run --config CONFIG`` in ``base_env`` (cleaned of kioskd, Azure and systemd
    variables) plus ``extra_env``."""

    def __init__(self, config: Path, base_env: Mapping[str, str], extra_env: Mapping[str, str],
                 health_port: int) -> None:
        self.env = {**{k: v for k, v in base_env.items() if not k.startswith(_DROPPED_PREFIXES)}, **extra_env}
        self.config = config
        self.health = f"http://127.0.0.1:{health_port}"
        self.bodies: dict[str, str] = {}
        self._out: list[str] = []
        self._err: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kioskd", "run", "--config", str(self.config)], cwd=ROOT, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for stream, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            threading.Thread(target=self._collect, args=(stream, sink), daemon=True).start()
        wait_until(self._ready, 90, "kioskd run to report ready on /readyz", interval=0.2)

    @staticmethod
    def _collect(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"kioskd run exited with {self.proc.returncode}:\n{self.output}")
        status, _ = self.get("/readyz")
        return status == 200

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the health endpoint; the body is kept in :attr:`bodies`."""
        try:
            with urllib.request.urlopen(self.health + path, timeout=5) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        except OSError:
            return 0, ""
        self.bodies[path] = body
        return status, body

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"kioskd run did not stop within {timeout:g} s of SIGTERM") from None

    @property
    def output(self) -> str:
        return "".join(self._out) + "".join(self._err)
