"""``kioskd sim`` as a user runs it: prints its URL, takes the key, refuses others, stops cleanly on a signal."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.sim.conftest import KEY, MODEL, next_event

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


async def start_sim(*extra: str) -> tuple[asyncio.subprocess.Process, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskd", "sim", "--port", "0", *extra,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().strip()
    env_line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().strip()
    return proc, url, env_line


@pytest.mark.asyncio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_kioskd_sim_serves_with_its_key_and_stops_on_a_signal(signum: int) -> None:
    proc, url, env_line = await start_sim("--api-key", KEY)
    try:
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", url), url
        assert env_line == f"AZURE_OPENAI_ENDPOINT={url}"
        endpoint = f"{url}/openai/v1/realtime?model={MODEL}"
        async with connect(endpoint, additional_headers={"api-key": KEY}) as ws:
            assert (await next_event(ws))["type"] == "session.created"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(endpoint, additional_headers={"api-key": "another-key-456"}):
                pass
        assert refused.value.response.status_code == 401
    finally:
        proc.send_signal(signum)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert proc.stdout is not None and proc.stderr is not None
    output = (await proc.stdout.read() + await proc.stderr.read()).decode()
    assert KEY not in output
    assert "Traceback" not in output


def test_a_non_loopback_host_is_refused_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kioskd", "sim", "--host", "0.0.0.0", "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_busy_port_is_reported_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kioskd", "sim", "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
