"""The upgrade request: paths, every way of sending a key, refusals with the service's statuses, forced faults."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from kioskd.sim import Faults, SimServer
from tests.sim.conftest import KEY, MODEL, fast_options, next_event, ws_url

pytestmark = pytest.mark.asyncio


async def refused(url: str, headers: dict[str, str] | None = None) -> Response:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers or {}):
            pass
    return info.value.response


def error_of(response: Response) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(response.body)
    assert KEY not in response.body.decode()
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("headers", "query", "auth"),
    [
        ({"api-key": KEY}, "", "api-key-header"),
        ({}, f"&api-key={KEY}", "api-key-query"),
        ({"Authorization": f"Bearer {KEY}"}, "", "bearer"),
    ],
)
async def test_each_documented_way_of_sending_the_key_opens_a_session(
    sim: SimServer, headers: dict[str, str], query: str, auth: str
) -> None:
    async with connect(ws_url(sim) + query, additional_headers=headers) as ws:
        event = await next_event(ws)
    assert event["type"] == "session.created"
    assert event["session"]["model"] == MODEL
    assert (sim.handshakes[-1].status, sim.handshakes[-1].auth) == (101, auth)
    record = await sim.wait_session_ended()
    assert (record.auth, record.flavour, record.close_code) == (auth, "azure", 1000)


async def test_the_openai_style_path_works_too(sim: SimServer) -> None:
    url = ws_url(sim, path="/v1/realtime")
    async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        assert (await next_event(ws))["type"] == "session.created"
    assert (await sim.wait_session()).flavour == "openai"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"api-key": "wrong-key-123456"}, ""),
        ({}, "&api-key=wrong-key-123456"),
        ({"Authorization": "Bearer wrong-key-123456"}, ""),
    ],
)
async def test_a_wrong_key_is_401(sim: SimServer, headers: dict[str, str], query: str) -> None:
    response = await refused(ws_url(sim) + query, headers)
    assert response.status_code == 401
    assert "invalid subscription key" in error_of(response)["message"]
    assert sim.sessions == []


async def test_a_missing_key_is_401_even_when_any_key_would_do() -> None:
    async with SimServer(fast_options(api_key=None)) as sim:
        assert "missing subscription key" in error_of(await refused(ws_url(sim)))["message"]
        async with connect(ws_url(sim), additional_headers={"api-key": "whatever-key"}) as ws:
            assert (await next_event(ws))["type"] == "session.created"


async def test_api_version_is_401_even_with_the_right_key(sim: SimServer) -> None:
    response = await refused(ws_url(sim) + "&api-version=2025-04-01-preview", {"api-key": KEY})
    assert response.status_code == 401
    assert "api-version" in error_of(response)["message"]


@pytest.mark.parametrize("path", ["/openai/realtime", "/openai/v1/chat/completions", "/realtime", "/"])
async def test_other_paths_are_404(sim: SimServer, path: str) -> None:
    response = await refused(f"{sim.url}{path}?model={MODEL}", {"api-key": KEY})
    assert response.status_code == 404


async def test_the_beta_header_is_refused_with_the_reason(sim: SimServer) -> None:
    response = await refused(ws_url(sim), {"api-key": KEY, "OpenAI-Beta": "realtime=v1"})
    assert response.status_code == 400
    assert "OpenAI-Beta" in error_of(response)["message"]


async def test_a_missing_model_or_a_transcription_deployment_is_400(sim: SimServer) -> None:
    missing = await refused(f"{sim.url}/openai/v1/realtime", {"api-key": KEY})
    assert missing.status_code == 400
    assert error_of(missing)["message"] == "Missing required parameter: 'model'."
    whisper = await refused(ws_url(sim, model="gpt-realtime-whisper"), {"api-key": KEY})
    assert whisper.status_code == 400
    assert error_of(whisper)["code"] == "OpperationNotSupported"


@pytest.mark.parametrize("accepted", [{"issued-token-1"}, lambda token: token.startswith("issued-")])
async def test_only_issued_bearer_tokens_are_accepted_when_configured(accepted: Any) -> None:
    async with SimServer(fast_options(api_key=None, accepted_bearer_tokens=accepted)) as sim:
        async with connect(ws_url(sim), additional_headers={"Authorization": "Bearer issued-token-1"}) as ws:
            assert (await next_event(ws))["type"] == "session.created"
        response = await refused(ws_url(sim), {"Authorization": "Bearer forged-token-9"})
        assert response.status_code == 401
        assert "Access token is missing, invalid" in error_of(response)["message"]


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500])
async def test_a_forced_handshake_status_is_answered_with_a_json_body(status: int) -> None:
    async with SimServer(fast_options(faults=Faults(handshake_status=status, retry_after_s=7))) as sim:
        response = await refused(ws_url(sim), {"api-key": KEY})
    assert response.status_code == status
    assert error_of(response)["message"]
    if status == 429:
        assert response.headers["Retry-After"] == "7"
        assert "retry after 7 seconds" in error_of(response)["message"]


async def test_a_forced_failure_can_be_limited_to_the_first_attempts(sim: SimServer) -> None:
    sim.options.faults = Faults(handshake_status=429, handshake_failures=1)
    assert (await refused(ws_url(sim), {"api-key": KEY})).status_code == 429
    async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
        assert (await next_event(ws))["type"] == "session.created"
    assert [h.status for h in sim.handshakes] == [429, 101]


async def test_the_handshake_can_be_delayed() -> None:
    async with SimServer(fast_options(faults=Faults(handshake_delay_s=0.4))) as sim:
        started = time.monotonic()
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
            assert time.monotonic() - started >= 0.4
            assert (await next_event(ws))["type"] == "session.created"
