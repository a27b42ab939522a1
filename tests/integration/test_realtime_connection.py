"""The realtime client over real WebSockets on 127.0.0.1: handshake failures, close codes, bad frames, set-up.

A small scripted ``websockets`` server stands in for the service where a test needs a precise failure (an
HTTP status at the upgrade, a given close code, a frame that is not JSON).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from kioskd import __version__
from kioskd.config import RealtimeConfig
from kioskd.logs import setup_logging
from kioskd.realtime.auth import ApiKeyAuth
from kioskd.realtime.client import RealtimeClient, RealtimeSetupError, open_session
from kioskd.realtime.session import Action, PlayAudio, ServerError, SessionEnded, Transcript
from kioskd.realtime.transport import (
    BadRequest,
    ConnectTimeout,
    CredentialsRejected,
    DeploymentNotFound,
    Forbidden,
    HandshakeFailed,
    RateLimited,
    ServerUnreachable,
)

pytestmark = pytest.mark.asyncio
API_KEY = "sk-test-9f8e7d6c5b4a3210"
WAIT_S = 30.0  # generous: the machine may be loaded; nothing here should take more than a fraction of it

Script = Callable[[ServerConnection], Awaitable[None]]


class Speaker:
    def current_item(self) -> str | None:
        return None

    def played_samples(self, item_id: str) -> int:
        return 0


def session_updated() -> dict[str, Any]:
    return {"type": "session.updated", "event_id": "event_1",
            "session": {"type": "realtime", "id": "sess_stub", "expires_at": 4_000_000_000, "instructions": "x"}}


class StubRealtime:
    """Answers the upgrade with ``status`` (or accepts it), confirms ``session.update``, then runs ``script``."""

    def __init__(self, *, status: int | None = None, body: str = "", headers: dict[str, str] | None = None,
                 script: Script | None = None, confirm: bool = True, reply: dict[str, Any] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.script, self.confirm, self.reply = script, confirm, reply
        self.requests: list[Request] = []
        self.received: list[dict[str, Any]] = []
        self.got_update = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.server: Server | None = None

    async def wait_received(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if self.status is None:
            return None
        response = connection.respond(self.status, self.body)
        for name, value in self.headers.items():
            response.headers[name] = value
        return response

    async def handler(self, ws: ServerConnection) -> None:
        async for frame in ws:
            event = json.loads(frame)
            async with self.arrived:
                self.received.append(event)
                self.arrived.notify_all()
            if event["type"] == "session.update":
                self.got_update.set()
                if self.reply is not None:
                    await ws.send(json.dumps(self.reply))
                elif self.confirm:
                    await ws.send(json.dumps(session_updated()))
                    if self.script is not None:
                        await self.script(ws)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> StubRealtime:
        self.server = await serve(self.handler, "127.0.0.1", 0, process_request=self.process_request,
                                  compression=None, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def config(endpoint: str, **overrides: Any) -> RealtimeConfig:
    values: dict[str, Any] = {"endpoint": endpoint, "api_key": API_KEY, "connect_timeout_s": WAIT_S,
                              "setup_timeout_s": WAIT_S}
    return RealtimeConfig(**(values | overrides))


async def open_stub(stub: StubRealtime, **overrides: Any) -> RealtimeClient:
    return await open_session(config(stub.endpoint, **overrides), ApiKeyAuth(API_KEY), Speaker())


async def collect(client: RealtimeClient) -> list[Action]:
    async with asyncio.timeout(WAIT_S):
        return [action async for action in client.events()]


# -- the handshake -----------------------------------------------------------------------------------------


async def test_a_good_handshake_speaks_ga_and_configures_the_session() -> None:
    async with StubRealtime() as stub:
        client = await open_stub(stub)
        assert client.core.ready and client.session_id == "sess_stub"
        request = stub.requests[0]
        assert request.path == "/openai/v1/realtime?model=gpt-realtime-1.5"
        assert request.headers["api-key"] == API_KEY
        assert request.headers["User-Agent"] == f"kioskd/{__version__}"
        assert "OpenAI-Beta" not in request.headers and "api-version" not in request.path
        assert "Sec-WebSocket-Extensions" not in request.headers  # compression off
        assert stub.received[0]["type"] == "session.update"
        assert stub.received[0]["session"]["type"] == "realtime"
        await client.close()


async def test_microphone_audio_arrives_exactly_as_appends() -> None:
    async with StubRealtime() as stub:
        client = await open_stub(stub)
        pcm = bytes(range(200)) * 48
        assert await client.send_audio(pcm)
        await stub.wait_received(2)
        await client.close()
        appended = stub.received[1]
        assert appended["type"] == "input_audio_buffer.append"
        assert base64.b64decode(appended["audio"]) == pcm


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "words"),
    [
        (401, "", {}, CredentialsRejected, "credentials rejected"),
        (403, "", {}, Forbidden, "forbidden"),
        (404, "", {}, DeploymentNotFound, "deployment not found"),
        (400, json.dumps({"error": {"code": "OpperationNotSupported",
                                    "message": "The realtime operation does not work with the specified model"}}),
         {}, BadRequest, "OpperationNotSupported"),
        (429, "", {"Retry-After": "7"}, RateLimited, "rate limited (HTTP 429), retry after 7 s"),
        (500, "", {}, HandshakeFailed, "HTTP 500"),
    ],
    ids=["401", "403", "404", "400", "429", "500"],
)
async def test_handshake_refusals_give_clear_errors(
    status: int, body: str, headers: dict[str, str], error: type[Exception], words: str
) -> None:
    async with StubRealtime(status=status, body=body, headers=headers) as stub:
        with pytest.raises(error) as caught:
            await open_stub(stub)
    message = str(caught.value)
    assert words in message
    assert "127.0.0.1" in message  # says where
    assert API_KEY not in message and API_KEY not in repr(caught.value.args)
    if status == 429:
        assert isinstance(caught.value, RateLimited) and caught.value.retry_after == 7.0
        assert caught.value.retryable
    if status == 400:
        assert isinstance(caught.value, BadRequest) and caught.value.code == "OpperationNotSupported"
    if status in (401, 403, 404, 400):
        assert not caught.value.retryable  # type: ignore[attr-defined]


async def test_a_redirect_is_refused_and_the_key_never_travels_to_its_target() -> None:
    async with StubRealtime() as target:
        elsewhere = target.endpoint.replace("127.0.0.1", "localhost") + "/openai/v1/realtime?model=x"
        async with StubRealtime(status=307, headers={"Location": elsewhere}) as stub:
            with pytest.raises(HandshakeFailed, match=r"redirected to localhost .* not followed") as caught:
                await open_stub(stub)
        assert target.requests == []
    assert API_KEY not in str(caught.value)


async def test_nothing_listening_is_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ServerUnreachable, match="connection refused"):
        await open_session(config(f"ws://127.0.0.1:{port}"), ApiKeyAuth(API_KEY), Speaker())


async def test_a_server_that_never_answers_the_handshake_times_out() -> None:
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # read until the client gives up; never answer
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectTimeout, match=r"no connection within 0\.5 s"):
            await open_session(config(f"ws://127.0.0.1:{port}", connect_timeout_s=0.5), ApiKeyAuth(API_KEY),
                               Speaker())
        assert accepted.is_set()
    finally:
        server.close()
        await server.wait_closed()


# -- set-up ------------------------------------------------------------------------------------------------


async def test_a_refused_session_update_is_a_clear_setup_error() -> None:
    refusal = {"type": "error", "event_id": "event_2", "error": {
        "type": "invalid_request_error", "code": "invalid_value", "message": "Invalid value: 'reasoning'.",
        "param": "session.reasoning", "event_id": None}}
    async with StubRealtime(reply=refusal) as stub:
        with pytest.raises(RealtimeSetupError, match="refused the session configuration: invalid_value") as caught:
            await open_stub(stub)
    assert not caught.value.retryable


async def test_no_confirmation_within_the_setup_timeout_is_a_clear_error() -> None:
    async with StubRealtime(confirm=False) as stub:
        with pytest.raises(RealtimeSetupError, match=r"did not confirm the session configuration within 0\.5 s"):
            await open_stub(stub, setup_timeout_s=0.5)
        assert stub.got_update.is_set()


# -- close codes and bad frames ------------------------------------------------------------------------------


def closing(code: int | None, reason: str = "") -> Script:
    async def script(ws: ServerConnection) -> None:
        if code is None:
            ws.transport.abort()  # no close frame: the network dropped
        else:
            await ws.close(code, reason)

    return script


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1000, "", "closed normally"),
        (1001, "Your session hit the maximum duration of 30 minutes.",
         "session expired: Your session hit the maximum duration of 30 minutes."),
        (None, "", "connection dropped"),
        (1011, "internal error", "server error: internal error"),
    ],
    ids=["1000", "1001", "1006", "1011"],
)
async def test_close_codes_end_the_session_with_their_reason(code: int | None, reason: str, expected: str) -> None:
    async with StubRealtime(script=closing(code, reason)) as stub:
        client = await open_stub(stub)
        actions = await collect(client)
    assert actions[-1] == SessionEnded(expected)
    assert not await client.send_audio(b"\x00\x00" * 480)  # nothing to send to any more, and no exception


async def test_a_frame_that_is_not_json_is_reported_and_the_session_goes_on() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send("this is not json {")
        await ws.send(json.dumps({"type": "conversation.item.input_audio_transcription.completed",
                                  "item_id": "item_u", "content_index": 0, "transcript": "hello"}))
        await ws.close(1000)

    async with StubRealtime(script=script) as stub:
        client = await open_stub(stub)
        actions = await collect(client)
    assert isinstance(actions[0], ServerError)
    assert actions[0].code == "malformed_frame" and not actions[0].fatal
    assert actions[1] == Transcript("user", "item_u", "hello")
    assert actions[-1] == SessionEnded("closed normally")


async def test_a_big_audio_delta_is_received_whole() -> None:
    pcm = b"\x10\x00" * (24_000 * 30)  # 30 s of audio in one frame: 1.4 MB of PCM, 1.9 MB of base64

    async def script(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "response.output_audio.delta", "response_id": "resp_1",
                                  "item_id": "item_a", "output_index": 0, "content_index": 0,
                                  "delta": base64.b64encode(pcm).decode()}))
        await ws.close(1000)

    async with StubRealtime(script=script) as stub:
        client = await open_stub(stub)
        actions = await collect(client)
    assert actions[0] == PlayAudio("item_a", "resp_1", pcm)


async def test_a_fatal_server_error_closes_the_connection() -> None:
    async def script(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "error", "event_id": "e", "error": {
            "type": "invalid_request_error", "code": "session_expired",
            "message": "Your session hit the maximum duration of 30 minutes.", "param": None, "event_id": None}}))
        await ws.wait_closed()

    async with StubRealtime(script=script) as stub:
        client = await open_stub(stub)
        actions = await collect(client)
    assert isinstance(actions[0], ServerError) and actions[0].fatal
    assert isinstance(actions[-1], SessionEnded) and "session_expired" in actions[-1].reason
    assert client.connection.close_code == 1000


# -- secrets -----------------------------------------------------------------------------------------------


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """kioskd's own logging set-up at debug level, written to a string; the logger is restored after."""
    logger = logging.getLogger("kioskd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    yield stream
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


async def test_the_key_never_reaches_a_log_line_even_at_debug(debug_log: io.StringIO) -> None:
    async with StubRealtime() as stub:
        client = await open_stub(stub)
        await client.close()
    async with StubRealtime(status=401) as stub:
        with pytest.raises(CredentialsRejected):
            await open_stub(stub)
    text = debug_log.getvalue()
    assert "api-key: [redacted]" in text  # the handshake was logged, header by header
    assert API_KEY not in text
