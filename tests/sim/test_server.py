"""The server around the core: server-wide totals, a failure inside one session, the threaded wrapper."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from kioskd.sim import SimCore, SimServer, SimServerThread
from tests.sim.conftest import KEY, events_until, fast_options, next_event, ws_url

RESPONSE_CREATE = json.dumps({"type": "response.create"})


@pytest.mark.asyncio
async def test_usage_is_totalled_per_session_and_for_the_server(sim: SimServer) -> None:
    for _ in range(2):
        async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
            await ws.send(RESPONSE_CREATE)
            done = (await events_until(ws, "response.done"))[-1]["response"]["usage"]
            assert done["total_tokens"] > 0
    first, second = await sim.wait_session_ended(1), await sim.wait_session_ended(2)
    assert first.usage.total_tokens == done["total_tokens"] == second.usage.total_tokens
    assert sim.usage.total_tokens == first.usage.total_tokens + second.usage.total_tokens
    assert sim.usage.output.audio == first.usage.output.audio + second.usage.output.audio


@pytest.mark.asyncio
async def test_a_failure_inside_one_session_closes_it_with_1011_and_the_server_goes_on(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receive = SimCore.receive

    def failing(self: SimCore, frame: str | bytes, now: float) -> list[object]:
        if isinstance(frame, str) and "explode" in frame:
            raise RuntimeError("simulated defect")
        return receive(self, frame, now)  # type: ignore[return-value]

    monkeypatch.setattr(SimCore, "receive", failing)
    async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
        await next_event(ws)
        await ws.send(json.dumps({"type": "explode"}))
        with pytest.raises(ConnectionClosed) as info:
            await next_event(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert (await sim.wait_session_ended()).close_code == 1011
    async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
        assert (await next_event(ws))["type"] == "session.created"


def test_the_threaded_server_serves_synchronous_clients() -> None:
    with SimServerThread(fast_options()) as sim:
        assert sim.url.startswith("ws://127.0.0.1:")
        with connect_sync(ws_url(sim.server), additional_headers={"api-key": KEY}) as ws:
            assert json.loads(ws.recv(timeout=20))["type"] == "session.created"
            ws.send(RESPONSE_CREATE)
            while json.loads(ws.recv(timeout=20))["type"] != "response.done":
                pass
        record = sim.wait_for(lambda: sim.sessions[0] if sim.sessions and sim.sessions[0].ended else None, 20)
        assert record.close_code == 1000
        assert record.responses[0].status == "completed"


@pytest.mark.asyncio
async def test_a_long_running_server_can_keep_less_history() -> None:
    async with SimServer(fast_options(keep_event_log=False, keep_sessions=1)) as sim:
        for n in (1, 2):
            async with connect(ws_url(sim), additional_headers={"api-key": KEY}) as ws:
                await ws.send(RESPONSE_CREATE)
                await events_until(ws, "response.done")
            await sim.wait_for(lambda: sim.sessions and all(r.ended for r in sim.sessions))
            assert len(sim.sessions) == 1, n
        record = sim.sessions[0]
        assert record.client_events == [] and record.server_events == []
        assert record.responses[0].status == "completed"  # the summary is still there
