"""The WebSocket under a realtime session: connect, send events, receive events, say why it closed.

A thin shell over ``websockets``' asyncio client. What it adds is translation: every way a handshake can
fail becomes a :class:`RealtimeConnectError` subclass whose message an operator can act on ("credentials
rejected", "deployment not found", "rate limited, retry after 20 s"), and every close code becomes a reason
for the log. Credentials travel only in the handshake headers; they are registered as secrets so no log line
can show them, and no exception message here is built from them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.http11 import Response

from kioskd import __version__
from kioskd.logs import get_logger, redact, register_secret
from kioskd.realtime.events import parse_server_event

log = get_logger("realtime.transport")
USER_AGENT = f"kioskd/{__version__}"
_SECRET_HEADERS = ("api-key", "authorization")


class RealtimeConnectError(Exception):
    """The realtime WebSocket could not be opened; the message says why, and never holds a credential.

    ``retryable`` tells the caller whether trying again later can help without anyone changing the
    configuration.
    """

    retryable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CredentialsRejected(RealtimeConnectError):
    """HTTP 401: a wrong or expired key or token, a missing Entra role, or an ``api-version`` in the URL."""

    retryable = False


class Forbidden(RealtimeConnectError):
    """HTTP 403: the identity is known but may not use this resource (network rules, role, region)."""

    retryable = False


class DeploymentNotFound(RealtimeConnectError):
    """HTTP 404: no such deployment (``realtime.deployment``) or path on this resource."""

    retryable = False


class BadRequest(RealtimeConnectError):
    """HTTP 400: the server refused the request; ``code`` is its error code (e.g. a non-realtime model)."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message, status=status)
        self.code = code


class RateLimited(RealtimeConnectError):
    """HTTP 429: quota or rate limit; ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class HandshakeFailed(RealtimeConnectError):
    """Any other refusal of the upgrade (5xx, a redirect, a broken HTTP response)."""


class ServerUnreachable(RealtimeConnectError):
    """No connection at all: refused, host name unknown, network down."""


class ConnectTimeout(RealtimeConnectError):
    """The connection or its handshake did not complete within ``open_timeout``."""


class ConnectionEnded(Exception):
    """The WebSocket closed; ``code`` is None when it dropped without a close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        self.description = describe_close(code, reason)
        super().__init__(self.description)


def describe_close(code: int | None, reason: str = "") -> str:
    """A close code (and the server's reason text) as a reason an operator understands."""
    detail = f": {reason}" if reason else ""
    if code == 1000:
        return f"closed normally{detail}"
    if code == 1001:
        return f"session expired{detail}"
    if code is None or code in (1005, 1006):
        return f"connection dropped{detail}"
    if code == 1011:
        return f"server error{detail}"
    if code in (1012, 1013):
        return f"server restarting, try again later{detail}"
    if code == 1008:
        return f"closed by server policy{detail}"
    if code == 1009:
        return f"message too big{detail}"
    return f"closed with code {code}{detail}"


def _body_error(response: Response) -> tuple[str | None, str | None]:
    """The ``error.code`` and ``error.message`` of a JSON error body, if the server sent one."""
    try:
        body = json.loads(response.body or b"")
    except (ValueError, UnicodeDecodeError):
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (code if isinstance(code, str) else None, message[:200] if isinstance(message, str) else None)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _status_error(response: Response, where: str) -> RealtimeConnectError:
    status = response.status_code
    code, message = _body_error(response)
    said = f" ({code}: {message})" if code and message else f" ({code or message})" if code or message else ""
    if status == 401:
        return CredentialsRejected(
            f"{where}: credentials rejected (HTTP 401){said}: check the API key or the Entra token's role, "
            "and that the endpoint carries no api-version", status=status)
    if status == 403:
        return Forbidden(f"{where}: forbidden (HTTP 403){said}: the identity may not use this resource",
                         status=status)
    if status == 404:
        return DeploymentNotFound(
            f"{where}: deployment not found (HTTP 404){said}: check realtime.deployment and the endpoint",
            status=status)
    if status == 400:
        return BadRequest(f"{where}: request refused (HTTP 400){said}", status=status, code=code)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        hint = f", retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimited(f"{where}: rate limited (HTTP 429){hint}{said}", status=status, retry_after=retry_after)
    if 300 <= status < 400:
        target = urlsplit(response.headers.get("Location", "")).hostname or "elsewhere"
        return HandshakeFailed(f"{where}: redirected to {target} (HTTP {status}) instead of a WebSocket upgrade; "
                               "redirects are not followed: check the endpoint", status=status)
    return HandshakeFailed(f"{where}: the server refused the WebSocket upgrade (HTTP {status}){said}",
                           status=status)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"realtime endpoint {parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


class _connect_without_redirects(ws_connect):
    """websockets follows redirects and strips only ``Authorization`` on the way, not ``api-key``: a redirect
    to another host would hand it the key. Refuse every redirect instead and say where it pointed."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class RealtimeConnection:
    """An open realtime WebSocket that speaks events (dicts), not frames."""

    def __init__(self, ws: ClientConnection, where: str) -> None:
        self._ws = ws
        self.where = where

    async def send(self, event: Mapping[str, Any]) -> None:
        """Send one client event; raises :class:`ConnectionEnded` if the socket is closed."""
        try:
            await self._ws.send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise _ended(exc) from None

    async def receive(self) -> dict[str, Any]:
        """The next server event.

        Raises :class:`~kioskd.realtime.events.ProtocolError` for a frame that is not an event (the
        connection stays usable) and :class:`ConnectionEnded` once the socket is closed.
        """
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as exc:
            raise _ended(exc) from None
        return parse_server_event(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket, reading (and discarding) whatever the server still sends meanwhile.

        websockets stops reading the socket while unread events fill its queue, so its close handshake
        would otherwise wait behind them for the server's close frame until the close timeout.
        """
        discard = asyncio.ensure_future(self._discard_incoming())
        try:
            await self._ws.close(code, reason)
        finally:
            discard.cancel()
            await asyncio.gather(discard, return_exceptions=True)

    async def _discard_incoming(self) -> None:
        try:
            while True:
                await self._ws.recv()
        except (ConnectionClosed, ConcurrencyError):  # closed; or the reader is still reading: it drains
            pass

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code


def _describe_char(ch: str) -> str:
    names = {"\r": "a carriage return", "\n": "a line feed", "\t": "a tab"}
    return names.get(ch, f"U+{ord(ch):04X}")


def _ended(exc: ConnectionClosed) -> ConnectionEnded:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return ConnectionEnded(None, "")
    return ConnectionEnded(frame.code, frame.reason)


async def connect(url: str, headers: Mapping[str, str], *, open_timeout: float) -> RealtimeConnection:
    """Open the realtime WebSocket at ``url`` with ``headers`` (credentials included) in the handshake.

    Messages have no size limit (one audio delta can carry half a second of audio as base64, well over
    websockets' 1 MiB default), and compression is off: base64 PCM barely compresses and deflate costs a
    Raspberry Pi real CPU per frame.
    """
    where = _where(url)
    for name, value in headers.items():
        if name.lower() in _SECRET_HEADERS:
            register_secret(value)
            register_secret(value.removeprefix("Bearer ").strip())
            bad = next((i for i, ch in enumerate(value) if not " " <= ch <= "~"), None)
            if bad is not None:  # websockets would refuse it too, quoting the whole value
                raise HandshakeFailed(
                    f"{where}: the {name} header cannot be sent: character {bad + 1} of the credential is "
                    f"{_describe_char(value[bad])}, which an HTTP header cannot carry (a stray line break or a "
                    "letter pasted in from elsewhere?)")
    try:
        ws = await _connect_without_redirects(
            url,
            additional_headers=dict(headers),
            user_agent_header=USER_AGENT,
            compression=None,
            max_size=None,
            open_timeout=open_timeout,
            logger=get_logger("realtime.websocket"),  # its debug lines pass the secret filter too
        )
    except InvalidStatus as exc:
        raise _status_error(exc.response, where) from None
    except InvalidURI as exc:
        raise ServerUnreachable(f"{where}: not a usable WebSocket URL: {exc}") from None
    except TimeoutError:
        raise ConnectTimeout(f"{where}: no connection within {open_timeout:g} s") from None
    except socket.gaierror as exc:
        raise ServerUnreachable(f"{where}: host name not found ({exc.strerror or exc})") from None
    except ConnectionRefusedError:
        raise ServerUnreachable(f"{where}: connection refused (nothing listening there)") from None
    except InvalidProxy as exc:
        raise ServerUnreachable(f"{where}: the proxy setting is not usable: {exc}") from None
    except WebSocketException as exc:  # any other broken handshake
        raise HandshakeFailed(redact(f"{where}: the WebSocket handshake failed: {exc}")) from None
    except OSError as exc:
        raise ServerUnreachable(f"{where}: cannot connect ({exc.strerror or exc})") from None
    log.debug("connected to %s", where)
    return RealtimeConnection(ws, where)
