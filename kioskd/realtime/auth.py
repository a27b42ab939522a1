"""Credentials for the realtime handshake: an Azure API key, or a Microsoft Entra ID bearer token.

Both only ever travel in the WebSocket upgrade request; the realtime protocol has no way to re-authenticate
a running session. An Entra token is therefore asked for before *every* connect — the credential caches it
and refreshes it when it nears expiry, so this costs nothing most of the time and never hands a stale token
to a new session. Neither mode sends ``OpenAI-Beta`` or ``api-version``: both switch Azure to the retired
preview protocol (or a 401).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from kioskd.config import RealtimeConfig
from kioskd.logs import get_logger, redact, register_secret
from kioskd.realtime.transport import RealtimeConnectError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = get_logger("realtime.auth")
# Secrets azure-identity reads from the environment; they must not surface in a log line either.
_CREDENTIAL_ENV = ("IDENTITY_HEADER", "MSI_SECRET", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD")


class Authenticator(Protocol):
    """Supplies the handshake headers that prove who we are."""

    async def headers(self) -> dict[str, str]:
        """Headers for the next connect; raises :class:`AuthError` if no credential can be had."""
        ...

    async def aclose(self) -> None:
        """Release what the authenticator holds (HTTP sessions); call once, at shutdown."""
        ...


class AuthError(RealtimeConnectError):
    """No token could be obtained (identity endpoint down, identity not configured, role missing)."""


class ApiKeyAuth:
    """The Azure resource key in the ``api-key`` header.

    An empty key sends no header at all: that is only valid against the local simulator, which the
    configuration checks allow without a key.
    """

    def __init__(self, api_key: str) -> None:
        self._key = api_key.strip()
        register_secret(self._key)

    async def headers(self) -> dict[str, str]:
        return {"api-key": self._key} if self._key else {}

    async def aclose(self) -> None:
        return None


class EntraAuth:
    """A Microsoft Entra ID token as ``Authorization: Bearer``, from one azure-identity async credential.

    The credential is created on first use, inside the running event loop (its aiohttp session belongs to
    that loop), and closed by :meth:`aclose`. By default it is ``DefaultAzureCredential``; set
    ``AZURE_TOKEN_CREDENTIALS`` to pin one source on a kiosk, or pass any async credential (the
    authenticator then owns it and closes it).
    """

    def __init__(self, scope: str, credential: AsyncTokenCredential | None = None) -> None:
        self.scope = scope
        self._credential = credential
        for name in _CREDENTIAL_ENV:
            register_secret(os.environ.get(name))

    def _get_credential(self) -> AsyncTokenCredential:
        if self._credential is None:
            try:
                from azure.identity.aio import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            except ImportError as exc:
                raise AuthError(f"Entra ID sign-in is not available: {exc}") from None
        return self._credential

    async def headers(self) -> dict[str, str]:
        from azure.core.exceptions import AzureError

        credential = self._get_credential()
        try:
            token = await credential.get_token(self.scope)
        except (AzureError, OSError, ValueError) as exc:
            detail = redact(str(getattr(exc, "message", None) or exc)).strip()
            first_line = detail.splitlines()[0] if detail else type(exc).__name__
            raise AuthError(f"could not get a Microsoft Entra ID token for scope {self.scope}: {first_line}") from None
        register_secret(token.token)
        log.debug("Entra ID token obtained for %s, expires at %d", self.scope, token.expires_on)
        return {"Authorization": f"Bearer {token.token}"}

    async def aclose(self) -> None:
        if self._credential is not None:
            await self._credential.close()
            self._credential = None


def make_authenticator(cfg: RealtimeConfig) -> Authenticator:
    """The authenticator ``realtime.auth`` asks for."""
    if cfg.auth == "entra":
        return EntraAuth(cfg.entra_scope)
    return ApiKeyAuth(cfg.api_key.get_secret_value())
