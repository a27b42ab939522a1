"""Secrets stay secret, the health endpoint stays local, TLS stays verified, state stays private.

The leak checks run the real thing: ``kioskd run`` on the audio rig against the simulator, once with an API
key and once with a Microsoft Entra ID token from a local managed-identity endpoint, each with a distinctive
secret, logging at debug level, through a wake, a conversation and (for the key) a rejected handshake. Then
everything an operator could see — the process's output, ``/healthz``, ``/readyz``, ``/status``,
``/metrics``, ``check-config`` — is searched for the secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any, ClassVar

import pytest
from websockets.asyncio.server import serve

from kioskd.budget import LEDGER_NAME, Ledger, TokenUsage
from kioskd.config import HealthConfig
from kioskd.realtime import transport
from kioskd.realtime.transport import RealtimeConnectError, connect
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.server import SimServer, SimServerThread
from tests.conftest import Speak
from tests.reliability.daemonproc import ROOT, DaemonProcess, free_port, listening_addresses
from tests.rig import AudioRig, wait_until

API_KEY = "sk-kioskd-7f3a9c1e5b2d4068-leakcheck"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.kioskd-entra-token-4e91b7.c2lnbmF0dXJl"
IDENTITY_HEADER = "identity-header-d41f0c9a7e"
REPLY = "It is on your left."
WAIT_S = 60.0


def secrets_in(text: str, *secrets: str) -> list[str]:
    """Which secrets (or their distinctive middle, in case something shortened them) appear in ``text``."""
    return [s for s in secrets if s in text or s[4:-4] in text]


def write_config(path: Path, sim_url: str, state_dir: Path, port: int, **realtime: str) -> Path:
    lines = [
        "[audio]", 'input_device = "pulse"', 'output_device = "pulse"', 'echo_cancellation = "off"',
        "[realtime]", f'endpoint = "{sim_url}"', *[f'{k} = "{v}"' for k, v in realtime.items()],
        "[session]", "idle_timeout_s = 1.0", "connect_backoff_s = 0.2", "connect_backoff_max_s = 0.5",
        "[budget]", f'state_dir = "{state_dir}"',
        "[health]", f"port = {port}",
        "[logging]", 'level = "debug"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def visit(rig: AudioRig, daemon: DaemonProcess, sim: SimServerThread, wav: Path, sessions: int) -> None:
    """Say the wake word and a question; wait until the simulator has seen ``sessions`` sessions end."""
    rig.play_and_wait(wav)
    sim.wait_for(lambda: len(sim.sessions) >= sessions and all(r.ended for r in sim.sessions), WAIT_S)
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        daemon.get(path)


def test_the_api_key_never_shows(audio_rig: AudioRig, speak: Speak, tmp_path: Path) -> None:
    wav = speak("Hey Jarvis, where is the exit?")
    port = free_port()
    state = tmp_path / "state"
    options = SimOptions(api_key=API_KEY, replies=[REPLY], faults=Faults(handshake_status=401, handshake_failures=1))
    with SimServerThread(options) as sim:
        config = write_config(tmp_path / "kioskd.toml", sim.url, state, port)
        daemon = DaemonProcess(config, audio_rig.env, {"AZURE_OPENAI_API_KEY": API_KEY}, port)
        daemon.start()
        try:
            # The health endpoint listens on the loopback address only.
            assert listening_addresses(port) == {"127.0.0.1"}
            # First visitor: the server rejects the key (an error path that names the endpoint, not the key).
            audio_rig.play_and_wait(wav)
            sim.wait_for(lambda: any(h.status == 401 for h in sim.server.handshakes), WAIT_S)
            wait_until(lambda: "credentials rejected" in daemon.output, WAIT_S, "the 401 in the log")
            wait_until(lambda: daemon.status()["last_error"] is not None, WAIT_S, "the error in /status")
            # Second visitor: a whole conversation.
            visit(audio_rig, daemon, sim, wav, sessions=1)
            wait_until(lambda: "session closed" in daemon.output, WAIT_S, "the session to close")
            for path in ("/healthz", "/readyz", "/status", "/metrics"):
                daemon.get(path)
        finally:
            status = daemon.stop()
    assert status == 0, daemon.output
    assert sim.sessions[0].auth == "api-key-header"
    assert "credentials rejected" in daemon.output and "session closed" in daemon.output
    assert "[redacted]" not in daemon.bodies["/status"]
    for where, text in [("output", daemon.output), *daemon.bodies.items()]:
        assert secrets_in(text, API_KEY) == [], f"the API key shows in {where}"
    # The spend ledger: the file private to the service user, and its directory too.
    assert stat.S_IMODE((state / LEDGER_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


class _TokenHandler(BaseHTTPRequestHandler):
    """The App Service flavour of a managed-identity endpoint (identity.md §3.1), on 127.0.0.1."""

    requests: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).requests.append(dict(self.headers))
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            self.send_error(400, "missing identity header")
            return
        expires = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
        body = json.dumps({"access_token": ENTRA_TOKEN, "expires_on": str(expires), "token_type": "Bearer",
                           "resource": "https://cognitiveservices.azure.com"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    _TokenHandler.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/msi/token"
    finally:
        server.shutdown()
        server.server_close()


def test_the_entra_token_and_identity_header_never_show(audio_rig: AudioRig, speak: Speak, tmp_path: Path,
                                                         token_endpoint: str) -> None:
    port = free_port()
    options = SimOptions(accepted_bearer_tokens={ENTRA_TOKEN}, replies=[REPLY])
    with SimServerThread(options) as sim:
        config = write_config(tmp_path / "kioskd.toml", sim.url, tmp_path / "state", port, auth="entra")
        env = {"AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential", "IDENTITY_ENDPOINT": token_endpoint,
               "IDENTITY_HEADER": IDENTITY_HEADER}
        daemon = DaemonProcess(config, audio_rig.env, env, port)
        daemon.start()
        try:
            visit(audio_rig, daemon, sim, speak("Hey Jarvis, where is the exit?"), sessions=1)
            wait_until(lambda: "session closed" in daemon.output, WAIT_S, "the session to close")
            for path in ("/healthz", "/readyz", "/status", "/metrics"):
                daemon.get(path)
        finally:
            status = daemon.stop()
    assert status == 0, daemon.output
    assert sim.sessions[0].auth == "bearer"
    assert _TokenHandler.requests, "the token came from the managed-identity endpoint"
    for where, text in [("output", daemon.output), *daemon.bodies.items()]:
        assert secrets_in(text, ENTRA_TOKEN, IDENTITY_HEADER) == [], f"a secret shows in {where}"


def test_check_config_masks_the_key_from_the_file_and_from_the_environment(tmp_path: Path) -> None:
    in_file = tmp_path / "kioskd.toml"
    in_file.write_text(f'[realtime]\nendpoint = "https://contoso.openai.azure.com"\napi_key = "{API_KEY}"\n')
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KIOSKD_", "AZURE_"))}
    for config, extra in ((in_file, {}), (empty, {"AZURE_OPENAI_ENDPOINT": "https://contoso.openai.azure.com",
                                                  "AZURE_OPENAI_API_KEY": API_KEY})):
        run = subprocess.run([sys.executable, "-m", "kioskd", "check-config", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **extra},
                             check=False)
        assert run.returncode == 0, run.stderr
        assert 'api_key = "********"' in run.stdout
        assert secrets_in(run.stdout + run.stderr, API_KEY) == []


@pytest.mark.parametrize("key", ["sk-kioskd-ключ-7f3a9c1e5b2d", "sk-kioskd-7f3a9c1e\r\nX-Injected: 1"])
def test_a_key_http_cannot_carry_is_refused_without_being_shown(key: str) -> None:
    """A pasted key with a stray newline or a non-ASCII letter: the error must say so, not print the key."""
    async def attempt() -> RealtimeConnectError:
        async with SimServer(SimOptions()) as sim:
            with pytest.raises(RealtimeConnectError) as caught:
                await connect(f"{sim.url}/openai/v1/realtime?model=gpt-realtime-1.5", {"api-key": key},
                              open_timeout=10)
            return caught.value

    error = asyncio.run(attempt())
    assert "sk-kioskd" not in str(error), str(error)


# -- the health endpoint ------------------------------------------------------------------------------

def test_the_health_endpoint_defaults_to_the_loopback_address() -> None:
    cfg = HealthConfig()
    assert ip_address(cfg.host).is_loopback and cfg.loopback_only


# -- TLS --------------------------------------------------------------------------------------------------

class _Captured(Exception):
    pass


def test_a_wss_endpoint_is_connected_with_certificate_and_host_name_verification(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What :func:`kioskd.realtime.transport.connect` hands websockets for an Azure endpoint."""
    seen: dict[str, Any] = {}

    def capture(url: str, **kwargs: Any) -> Any:
        seen.update(kwargs, url=url)
        raise _Captured

    monkeypatch.setattr(transport, "_connect_without_redirects", capture)
    url = "wss://contoso-kiosk.openai.azure.com/openai/v1/realtime?model=gpt-realtime-1.5"
    with pytest.raises(_Captured):
        asyncio.run(connect(url, {"api-key": API_KEY}, open_timeout=5))
    assert seen["url"] == url
    context = seen.get("ssl")
    if context is not None:  # websockets' own default (verification on) is what is wanted otherwise
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "server_hostname" not in seen or seen["server_hostname"] == "contoso-kiosk.openai.azure.com"


def _self_signed(directory: Path, address: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _own_address() -> str:
    """This machine's address on its network (not loopback), or 127.0.0.1 on a machine that has none."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address: str = s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


def test_a_server_with_a_certificate_nobody_vouches_for_is_refused(tmp_path: Path) -> None:
    address = _own_address()
    cert, key = _self_signed(tmp_path, address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    accepted: list[object] = []

    async def attempt() -> RealtimeConnectError:
        async def handler(ws: Any) -> None:
            accepted.append(ws)

        async with serve(handler, address, 0, ssl=context) as server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(RealtimeConnectError) as caught:
                await connect(f"wss://{address}:{port}/openai/v1/realtime?model=gpt-realtime-1.5",
                              {"api-key": API_KEY}, open_timeout=10)
            return caught.value

    error = asyncio.run(attempt())
    assert accepted == []
    assert "certificate" in str(error).lower(), str(error)
    assert API_KEY not in str(error)


# -- state files --------------------------------------------------------------------------------------------

def test_the_ledger_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "kioskd"
    old = os.umask(0)
    try:
        Ledger(state).add(0.01, TokenUsage(text_in=10, audio_out=20))
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / LEDGER_NAME).stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == [LEDGER_NAME]  # no temporary file left behind


def test_the_unit_creates_the_state_directory_private() -> None:
    """systemd makes ``StateDirectory=`` 0755 unless told otherwise, and the ledger never changes an existing
    directory's mode: the unit has to ask for 0700."""
    unit = (ROOT / "systemd" / "kioskd.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert settings.get("StateDirectory") == "kioskd"
    assert settings.get("StateDirectoryMode") == "0700"
