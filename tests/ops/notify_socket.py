"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket that records who sent what.

With SO_PASSCRED every datagram carries the sender's pid as the kernel saw it (SCM_CREDENTIALS), which is
how systemd applies ``NotifyAccess=main``; the tests check that pid too.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class Datagram:
    pid: int
    text: str

    @property
    def assignments(self) -> list[str]:
        return self.text.split("\n")


class NotifySocket:
    """Bind ``address`` (a path, or ``@name`` for the abstract namespace); ``env`` is NOTIFY_SOCKET's value."""

    def __init__(self, address: str) -> None:
        self.env = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[Datagram] = []

    def close(self) -> None:
        self.sock.close()

    def recv(self, timeout_s: float) -> Datagram | None:
        """The next datagram, or None when none arrives within ``timeout_s``."""
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        datagram = Datagram(pid, data.decode("utf-8"))
        self.received.append(datagram)
        return datagram

    def wait_for(self, predicate: Callable[[Datagram], bool], timeout_s: float) -> Datagram:
        """Receive until a datagram matches; fail with everything seen when ``timeout_s`` runs out."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            datagram = self.recv(left)
            if datagram is not None and predicate(datagram):
                return datagram
        seen = [d.text for d in self.received]
        raise AssertionError(f"no matching notify message within {timeout_s} s; received: {seen}")

    def collect(self, duration_s: float) -> list[Datagram]:
        """Everything that arrives during ``duration_s`` (for checking that something does *not* come)."""
        out = []
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            datagram = self.recv(left)
            if datagram is not None:
                out.append(datagram)
        return out
