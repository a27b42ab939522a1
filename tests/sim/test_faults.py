"""Session faults on a live socket: dropped connection, malformed frame, error event, close 1011, latency, cap."""

from __future__ import annotations

import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kioskd.sim import Faults, SimServer
from kioskd.sim.session import session_cap_reason
from tests.sim.conftest import KEY, fast_options, next_event, ws_url

pytestmark = pytest.mark.asyncio

UPDATE = json.dumps({"type": "session.update", "session": {"type": "realtime"}})
CREATE = json.dumps({"type": "response.create"})


async def test_drop_after_n_events_ends_the_connection_without_a_close_frame() -> None:
    async with SimServer(fast_options(faults=Faults(drop_after_events=3))) as sim:
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
            await ws.send(UPDATE)
            await ws.send(CREATE)
            received = []
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    received.append(await next_event(ws))
            assert [e["type"] for e in received] == ["session.created", "session.updated", "response.created"]
            assert info.value.rcvd is None  # no close frame came
            assert ws.close_code == 1006
        record = await sim.wait_session_ended()
        assert record.close_code == 1006


async def test_a_malformed_frame_follows_the_nth_event() -> None:
    async with (
        SimServer(fast_options(faults=Faults(malformed_after_events=2))) as sim,
        connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws,
    ):
        await ws.send(UPDATE)
        assert (await next_event(ws))["type"] == "session.created"
        assert (await next_event(ws))["type"] == "session.updated"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await ws.recv())
        await ws.send(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"  # the session goes on


async def test_an_error_event_follows_the_nth_event() -> None:
    async with (
        SimServer(fast_options(faults=Faults(error_after_events=1))) as sim,
        connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws,
    ):
        created = await next_event(ws)
        error = await next_event(ws)
    assert error["type"] == "error"
    assert error["error"]["type"] == "server_error"
    assert created["session"]["id"] in error["error"]["message"]


async def test_close_1011_after_n_events() -> None:
    async with SimServer(fast_options(faults=Faults(close_after_events=2))) as sim:
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
            await ws.send(UPDATE)
            await next_event(ws)
            await next_event(ws)
            with pytest.raises(ConnectionClosed) as info:
                await next_event(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        assert (await sim.wait_session_ended()).close_code == 1011


async def test_session_faults_can_be_limited_to_the_first_sessions() -> None:
    async with SimServer(fast_options(faults=Faults(close_after_events=1, session_failures=1))) as sim:
        for expected in (1011, 1000):
            async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
                await next_event(ws)
                if expected == 1000:
                    await ws.send(UPDATE)
                    assert (await next_event(ws))["type"] == "session.updated"
                else:
                    with pytest.raises(ConnectionClosed):
                        await next_event(ws)
        assert [(await sim.wait_session_ended(n)).close_code for n in (1, 2)] == [1011, 1000]


async def test_latency_holds_every_event_back() -> None:
    async with (
        SimServer(fast_options(faults=Faults(event_latency_s=0.3))) as sim,
        connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws,
    ):
        await next_event(ws)
        sent = time.monotonic()
        await ws.send(UPDATE)
        assert (await next_event(ws))["type"] == "session.updated"
        assert time.monotonic() - sent >= 0.3


async def test_the_session_cap_closes_with_1001_and_the_reason() -> None:
    async with SimServer(fast_options(session_cap_s=1.5)) as sim:
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
            created = await next_event(ws)
            assert abs(created["session"]["expires_at"] - (time.time() + 1.5)) <= 2
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await next_event(ws, timeout_s=30)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, session_cap_reason(1.5))
        record = await sim.wait_session_ended()
        assert (record.close_code, record.close_reason) == (1001, session_cap_reason(1.5))
