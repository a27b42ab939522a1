"""Authenticators: the right header for each mode, clear errors, and no secret in any message."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from kioskd.config import RealtimeConfig
from kioskd.logs import redact
from kioskd.realtime.auth import ApiKeyAuth, AuthError, EntraAuth, make_authenticator

SCOPE = "https://cognitiveservices.azure.com/.default"


class StaticCredential:
    """An async token credential that hands out scripted tokens or failures (the azure-identity seam)."""

    def __init__(self, *results: AccessToken | Exception) -> None:
        self.results = list(results)
        self.scopes: list[tuple[str, ...]] = []
        self.closed = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    async def close(self) -> None:
        self.closed += 1


@pytest.mark.asyncio
async def test_api_key_goes_in_the_api_key_header_and_is_registered_secret() -> None:
    auth = ApiKeyAuth("  key-0123456789abcdef \n")
    assert await auth.headers() == {"api-key": "key-0123456789abcdef"}
    assert "key-0123456789abcdef" not in redact("sent key-0123456789abcdef")


@pytest.mark.asyncio
async def test_an_empty_key_sends_no_header_for_the_local_simulator() -> None:
    assert await ApiKeyAuth("").headers() == {}


@pytest.mark.asyncio
async def test_entra_asks_for_a_token_on_every_connect_and_sends_it_as_bearer() -> None:
    credential = StaticCredential(AccessToken("tok-first-123456", 2_000_000_000),
                                  AccessToken("tok-second-123456", 2_000_000_000))
    auth = EntraAuth(SCOPE, credential)  # type: ignore[arg-type]
    assert await auth.headers() == {"Authorization": "Bearer tok-first-123456"}
    assert await auth.headers() == {"Authorization": "Bearer tok-second-123456"}
    assert credential.scopes == [(SCOPE,), (SCOPE,)]
    assert "tok-second-123456" not in redact("Bearer tok-second-123456")
    await auth.aclose()
    await auth.aclose()
    assert credential.closed == 1


@pytest.mark.asyncio
async def test_a_token_failure_is_one_clear_line_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "identity-header-secret-42")
    failure = ClientAuthenticationError(
        "ManagedIdentityCredential authentication unavailable, header identity-header-secret-42 refused.\n"
        "Troubleshooting: https://aka.ms/azsdk/python/identity/managedidentitycredential/troubleshoot")
    auth = EntraAuth(SCOPE, StaticCredential(failure))  # type: ignore[arg-type]
    with pytest.raises(AuthError) as caught:
        await auth.headers()
    message = str(caught.value)
    assert message.startswith(f"could not get a Microsoft Entra ID token for scope {SCOPE}: ")
    assert "authentication unavailable" in message
    assert "identity-header-secret-42" not in message and "\n" not in message
    assert caught.value.retryable


def test_make_authenticator_follows_realtime_auth() -> None:
    assert isinstance(make_authenticator(RealtimeConfig(api_key="k" * 32)), ApiKeyAuth)
    entra = make_authenticator(RealtimeConfig(auth="entra", entra_scope="https://ai.azure.com/.default"))
    assert isinstance(entra, EntraAuth) and entra.scope == "https://ai.azure.com/.default"
