"""Entra ID end to end, offline: the real azure-identity async credential, a token server on 127.0.0.1 (the
App Service managed-identity flavour, identity.md §3.1) and a realtime endpoint that checks the bearer token
on every handshake."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from azure.identity.aio import ManagedIdentityCredential
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from kioskd.config import RealtimeConfig
from kioskd.realtime.auth import AuthError, EntraAuth, make_authenticator
from kioskd.realtime.client import open_session
from kioskd.realtime.transport import CredentialsRejected

pytestmark = pytest.mark.asyncio
IDENTITY_HEADER = "identity-header-7c1d9e2f"
SCOPE = "https://cognitiveservices.azure.com/.default"
WAIT_S = 30.0


class Speaker:
    def current_item(self) -> str | None:
        return None

    def played_samples(self, item_id: str) -> int:
        return 0


class TokenServer:
    """The managed-identity endpoint: checks the identity header, issues numbered tokens.

    ``refresh_in`` is the hint the endpoint gives for when to fetch a new token (azure-identity treats a
    passed hint as "refresh required"); None means a plain one-hour token.
    """

    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.issued: list[str] = []
        self.refresh_in: int | None = None
        self.fail_with: int | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def token(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if request.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return web.json_response({"error": "missing identity header"}, status=400)
        if self.fail_with is not None:
            return web.json_response({"error": {"code": "Unavailable", "message": "try later"}},
                                     status=self.fail_with)
        token = f"entra-token-{len(self.issued) + 1}-{'x' * 24}"
        self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "expires_on": str(int(time.time()) + 3600),
                                "resource": "https://cognitiveservices.azure.com", "token_type": "Bearer"}
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return web.json_response(body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/msi/token", self.token)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/msi/token"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


class BearerRealtime:
    """A realtime endpoint that accepts only the newest token the identity endpoint issued."""

    def __init__(self, tokens: TokenServer) -> None:
        self.tokens = tokens
        self.seen: list[str] = []
        self.server: Server | None = None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(bearer)
        if not self.tokens.issued or bearer != self.tokens.issued[-1] or "api-key" in request.headers:
            return connection.respond(401, "")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        async for frame in ws:
            if json.loads(frame)["type"] == "session.update":
                await ws.send(json.dumps({"type": "session.updated", "event_id": "e",
                                          "session": {"type": "realtime", "id": "sess_entra"}}))

    async def __aenter__(self) -> BearerRealtime:
        self.server = await serve(self.handler, "127.0.0.1", 0, process_request=self.process_request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def config(self) -> RealtimeConfig:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return RealtimeConfig(endpoint=f"ws://127.0.0.1:{port}", auth="entra", entra_scope=SCOPE,
                              connect_timeout_s=WAIT_S, setup_timeout_s=WAIT_S)


@pytest_asyncio.fixture
async def token_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TokenServer]:
    server = TokenServer()
    await server.start()
    for name in ("IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID",
                 "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.url)
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    yield server
    await server.stop()


async def connect_twice(auth: EntraAuth, endpoint: BearerRealtime) -> None:
    for _ in range(2):
        client = await open_session(endpoint.config(), auth, Speaker())
        assert client.session_id == "sess_entra"
        await client.close()


async def test_one_token_serves_two_connects_while_it_is_fresh(token_server: TokenServer) -> None:
    auth = EntraAuth(SCOPE, ManagedIdentityCredential())
    try:
        async with BearerRealtime(token_server) as endpoint:
            await connect_twice(auth, endpoint)
    finally:
        await auth.aclose()
    assert endpoint.seen == [token_server.issued[0]] * 2
    assert len(token_server.requests) == 1
    request = token_server.requests[0]
    assert request.query["resource"] == "https://cognitiveservices.azure.com"
    assert request.query["api-version"] == "2019-08-01"


async def test_a_token_due_for_refresh_is_replaced_before_the_next_connect(token_server: TokenServer) -> None:
    token_server.refresh_in = 0  # the endpoint says: fetch a new one next time
    auth = EntraAuth(SCOPE, ManagedIdentityCredential())
    try:
        async with BearerRealtime(token_server) as endpoint:
            await connect_twice(auth, endpoint)
    finally:
        await auth.aclose()
    assert len(token_server.issued) == 2
    assert endpoint.seen == token_server.issued  # each handshake carried the token current at that moment


async def test_the_default_credential_is_made_in_the_loop_and_closed(
    token_server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")  # pinned, as on a kiosk
    async with BearerRealtime(token_server) as endpoint:
        cfg = endpoint.config()
        auth = make_authenticator(cfg)
        try:
            client = await open_session(cfg, auth, Speaker())
            await client.close()
        finally:
            await auth.aclose()
    assert endpoint.seen == token_server.issued[:1]


async def test_a_revoked_token_is_a_clear_401(token_server: TokenServer) -> None:
    auth = EntraAuth(SCOPE, ManagedIdentityCredential())
    try:
        async with BearerRealtime(token_server) as endpoint:
            await (await open_session(endpoint.config(), auth, Speaker())).close()
            token_server.issued.append("someone-else-now")  # the service no longer honours ours
            with pytest.raises(CredentialsRejected, match="credentials rejected") as caught:
                await open_session(endpoint.config(), auth, Speaker())
    finally:
        await auth.aclose()
    assert token_server.issued[0] not in str(caught.value)


async def test_an_identity_endpoint_failure_is_a_clear_auth_error(token_server: TokenServer) -> None:
    token_server.fail_with = 500
    auth = EntraAuth(SCOPE, ManagedIdentityCredential(retry_total=0))
    try:
        async with BearerRealtime(token_server) as endpoint:
            async with asyncio.timeout(WAIT_S):
                with pytest.raises(AuthError) as caught:
                    await open_session(endpoint.config(), auth, Speaker())
            assert endpoint.seen == []  # no handshake without a token
    finally:
        await auth.aclose()
    message = str(caught.value)
    assert message.startswith(f"could not get a Microsoft Entra ID token for scope {SCOPE}")
    assert IDENTITY_HEADER not in message
