"""Turn what an operator writes as the endpoint into the GA realtime WebSocket URL.

Accepted forms (DESIGN.md §3, realtime-protocol.md §1):

* ``https://<resource>.openai.azure.com`` (with or without ``/openai/v1``), likewise
  ``*.services.ai.azure.com`` and ``*.cognitiveservices.azure.com``; ``wss://`` spelled out works too;
* OpenAI's ``https://api.openai.com`` / ``wss://api.openai.com/v1/realtime?model=...``;
* ``ws://127.0.0.1:PORT`` or ``http://localhost:PORT`` for the bundled simulator (loopback only).

Refused with an explanation: an ``api-version`` query parameter, the retired preview path
``/openai/realtime``, plain-text schemes for hosts that are not loopback.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit


class EndpointError(ValueError):
    """The endpoint cannot be used; the message says why and what to write instead."""


_SECURE = {"https": "wss", "wss": "wss"}
_PLAIN = {"http": "ws", "ws": "ws"}


@dataclass(frozen=True)
class RealtimeEndpoint:
    url: str
    host: str
    flavour: str  # "azure" | "openai" | "local"

    @property
    def is_loopback(self) -> bool:
        return self.flavour == "local"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_realtime_url(endpoint: str, deployment: str) -> RealtimeEndpoint:
    """Return the ``wss://<host>/openai/v1/realtime?model=<deployment>`` URL for ``endpoint``."""
    raw = endpoint.strip()
    if not raw:
        raise EndpointError(
            "is empty: set it to https://<resource>.openai.azure.com "
            "(or ws://127.0.0.1:PORT for the bundled simulator)"
        )
    if "://" not in raw:
        raise EndpointError(f"{raw!r} has no scheme: write https://{raw}")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise EndpointError(f"{raw!r} has no host name")
    query = parse_qs(parts.query)
    if "api-version" in query:
        raise EndpointError(
            "carries 'api-version', which belongs to the retired preview protocol "
            "(Azure answers 401 on the GA path); remove it and use https://<resource>.openai.azure.com"
        )
    path = parts.path.rstrip("/")
    if path == "/openai/realtime" or "deployment" in query:
        raise EndpointError(
            "is the preview realtime URL (/openai/realtime?deployment=...), retired on 2026-04-30; "
            "use https://<resource>.openai.azure.com (the GA path /openai/v1/realtime is added for you)"
        )
    loopback = is_loopback_host(host)
    if scheme in _PLAIN:
        if not loopback:
            raise EndpointError(
                f"uses {scheme}:// for {host}, which is not a loopback address; "
                "plain-text connections are only for the local simulator: use https://"
            )
        ws_scheme = "ws"
    elif scheme in _SECURE:
        ws_scheme = "wss"
    else:
        raise EndpointError(f"scheme {scheme!r} is not supported: use https:// (or ws:// for loopback)")
    if not deployment.strip():
        raise EndpointError("needs a deployment name (realtime.deployment / AZURE_OPENAI_DEPLOYMENT_NAME)")

    netloc = parts.netloc.rsplit("@", 1)[-1]  # never carry user:password into the URL
    model = quote(deployment.strip(), safe="")
    if host == "api.openai.com":
        if path not in ("", "/v1", "/v1/realtime"):
            raise EndpointError(f"path {path!r} is not an OpenAI realtime path: use https://api.openai.com")
        return RealtimeEndpoint(f"wss://{netloc}/v1/realtime?model={model}", host, "openai")
    if path not in ("", "/openai", "/openai/v1", "/openai/v1/realtime"):
        raise EndpointError(
            f"path {path!r} is not a realtime path: give the resource URL "
            "(https://<resource>.openai.azure.com) with or without /openai/v1"
        )
    flavour = "local" if loopback else "azure"
    return RealtimeEndpoint(f"{ws_scheme}://{netloc}/openai/v1/realtime?model={model}", host, flavour)
