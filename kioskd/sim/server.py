"""The simulator's WebSocket server: a thin asyncio driver around ``SimCore``, plus ``kioskd sim``.

Per connection it runs three small loops: the reader feeds client frames to the core, a ticker wakes the core
when its next deadline passes (paced audio, transcriptions, the session cap), and a sender writes the core's
events in order, applying injected faults (latency, dropped connection, malformed frame, error event, close 1011).
The handshake is checked in ``process_request`` the way the service checks it (path, ``api-version``, key or
bearer token, ``OpenAI-Beta``, deployment) and answers failures with the service's HTTP status and a JSON body.

Tests read ``SimServer.sessions`` / ``handshakes`` and wait with ``wait_for`` and its helpers, which wake on
every change instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kioskd.logs import get_logger, log_event, register_secret, setup_logging
from kioskd.realtime.endpoint import is_loopback_host
from kioskd.sim.core import Close, Output, SimCore
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.records import SessionRecord, Truncation
from kioskd.sim.usage import PromptCache, Usage
from kioskd.sim.voice import ReplyVoice

T = TypeVar("T")
log = get_logger("sim")

AZURE_PATH = "/openai/v1/realtime"
OPENAI_PATH = "/v1/realtime"
MAX_FRAME_BYTES = 32 * 1024 * 1024  # above the 15 MiB append limit, so the core can answer it with an error
DEFAULT_WAIT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
EX_USAGE = 2

_MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making requests "
    "to an API."
)
_WRONG_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)
_WRONG_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), "
    "or have expired."
)
_API_VERSION = (
    "The GA realtime endpoint /openai/v1/realtime does not take an api-version query parameter: it selects the "
    "retired preview protocol. Remove api-version."
)
_BETA_HEADER = (
    "The beta Realtime API shape is no longer supported: remove the 'OpenAI-Beta: realtime=v1' header and use the "
    "GA protocol."
)
_FORCED_BODIES = {
    401: ("401", _WRONG_KEY),
    403: ("PermissionDenied", "Principal does not have access to API/Operation."),
    404: ("404", "Resource not found"),
    429: (
        "429",
        "Requests to the Realtime API have exceeded the rate limit of your current pricing tier. "
        "Please retry after {retry} seconds.",
    ),
    500: ("InternalServerError", "The service encountered an internal error. Please retry."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry."),
}

_shared_voices: dict[bool | None, ReplyVoice] = {}
_shared_voices_lock = threading.Lock()


def shared_voice(use_espeak: bool | None) -> ReplyVoice:
    """One cached reply voice per process: every server reuses the same synthesised replies."""
    with _shared_voices_lock:
        voice = _shared_voices.get(use_espeak)
        if voice is None:
            voice = _shared_voices[use_espeak] = ReplyVoice(use_espeak=use_espeak)
        return voice


@dataclass
class HandshakeRecord:
    """One upgrade attempt: never the credential itself, only how it was sent."""

    path: str
    query_keys: list[str]
    model: str | None
    auth: str | None  # "api-key-header" | "api-key-query" | "bearer" | None
    beta_header: bool
    status: int  # 101 when accepted


@dataclass
class _Accepted:
    model: str
    flavour: str
    auth: str


def _json_response(connection: ServerConnection, status: int, code: str, message: str, **extra: Any) -> Response:
    body = {"error": {"code": code, "message": message, **extra}}
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class SimServer:
    """The realtime simulator on a loopback port; an async context manager.

    ``url`` is ``ws://127.0.0.1:PORT``: give it to a client as its endpoint (the GA path is added by the
    client; the server serves ``/openai/v1/realtime?model=`` and ``/v1/realtime?model=``). ``options`` may be
    replaced or changed between connections.
    """

    def __init__(
        self,
        options: SimOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        voice: ReplyVoice | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the simulator binds loopback addresses only, not {host!r}")
        self.options = options or SimOptions()
        self.options.validate()
        self.host = host
        self.port = port
        self.sessions: list[SessionRecord] = []
        self.handshakes: list[HandshakeRecord] = []
        self.prompt_cache = PromptCache()
        self._voice = voice
        self._wall_clock = wall_clock
        self._server: Server | None = None
        self._accepted: dict[ServerConnection, _Accepted] = {}
        self._forced_failures = 0
        self._changed = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def voice(self) -> ReplyVoice:
        if self._voice is None:
            self._voice = shared_voice(self.options.use_espeak)
        return self._voice

    async def start(self) -> None:
        """Bind, warm the reply cache and start accepting; ``port`` then holds the real port."""
        voice = self.voice
        await asyncio.to_thread(voice.prepare, self.options.replies)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            compression=None,
            ping_interval=None,
        )
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self.port
        log_event(log, "sim_start", "realtime simulator listening on %s", self.url, SIM_URL=self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        self._notify()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- introspection -------------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        """Usage summed over every session this server has had."""
        total = Usage()
        for record in self.sessions:
            total = total + record.usage
        return total

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T | None], timeout_s: float = DEFAULT_WAIT_S) -> T:
        """Wait until ``predicate()`` returns something truthy and return it; ``TimeoutError`` otherwise.

        The predicate is re-checked on every change (an event sent or received, a session opening or ending).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"simulator: condition not met within {timeout_s:g} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def wait_session(self, number: int = 1, timeout_s: float = DEFAULT_WAIT_S) -> SessionRecord:
        """The ``number``-th session (1-based), once it has opened."""
        return await self.wait_for(
            lambda: self.sessions[number - 1] if len(self.sessions) >= number else None, timeout_s
        )

    async def wait_session_ended(self, number: int = 1, timeout_s: float = DEFAULT_WAIT_S) -> SessionRecord:
        """The ``number``-th session, once its connection has closed (``close_code`` is then set)."""
        def ended() -> SessionRecord | None:
            if len(self.sessions) >= number and self.sessions[number - 1].ended:
                return self.sessions[number - 1]
            return None

        return await self.wait_for(ended, timeout_s)

    async def wait_truncation(self, number: int = 1, timeout_s: float = DEFAULT_WAIT_S) -> Truncation:
        """The ``number``-th ``conversation.item.truncate`` received, over all sessions."""
        def found() -> Truncation | None:
            truncations = [t for record in self.sessions for t in record.truncations]
            return truncations[number - 1] if len(truncations) >= number else None

        return await self.wait_for(found, timeout_s)

    async def wait_server_event(
        self, event_type: str, number: int = 1, *, session: int = 1, timeout_s: float = DEFAULT_WAIT_S
    ) -> dict[str, Any]:
        """The ``number``-th event of ``event_type`` sent in session ``session``."""
        def found() -> dict[str, Any] | None:
            if len(self.sessions) < session:
                return None
            events = self.sessions[session - 1].server_events_of(event_type)
            return events[number - 1] if len(events) >= number else None

        return await self.wait_for(found, timeout_s)

    async def wait_client_event(
        self, event_type: str, number: int = 1, *, session: int = 1, timeout_s: float = DEFAULT_WAIT_S
    ) -> dict[str, Any]:
        """The ``number``-th client event of ``event_type`` received in session ``session``."""
        def found() -> dict[str, Any] | None:
            if len(self.sessions) < session:
                return None
            events = self.sessions[session - 1].client_events_of(event_type)
            return events[number - 1] if len(events) >= number else None

        return await self.wait_for(found, timeout_s)

    # --- handshake -----------------------------------------------------------------------------------

    def _authenticate(self, request: Request, query: dict[str, list[str]]) -> tuple[str | None, str | None]:
        """(how the credential came, failure message or None)."""
        opts = self.options
        header_key = request.headers.get("api-key")
        query_key = query["api-key"][0] if query.get("api-key") else None
        authorization = request.headers.get("Authorization") or ""
        if header_key:
            kind, credential = "api-key-header", header_key
        elif query_key:
            kind, credential = "api-key-query", query_key
        elif authorization[:7].lower() == "bearer " and authorization[7:].strip():
            kind, credential = "bearer", authorization[7:].strip()
        else:
            return None, _MISSING_KEY
        key_ok = opts.api_key is None or hmac.compare_digest(credential.encode(), opts.api_key.encode())
        if kind != "bearer":
            return kind, None if key_ok else _WRONG_KEY
        accepted = opts.accepted_bearer_tokens
        if accepted is not None:
            token_ok = accepted(credential) if callable(accepted) else credential in accepted
            if token_ok or (opts.api_key is not None and key_ok):
                return kind, None
            return kind, _WRONG_TOKEN
        return kind, None if key_ok else _WRONG_KEY

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        opts = self.options
        faults = opts.faults
        parts = urlsplit(request.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        model = query["model"][0] if query.get("model") else None
        beta = "realtime=v1" in (request.headers.get("OpenAI-Beta") or "").replace(" ", "")
        auth, auth_problem = self._authenticate(request, query)
        record = HandshakeRecord(parts.path, sorted(query), model, auth, beta, 0)
        self.handshakes.append(record)
        if faults.handshake_delay_s > 0:
            await asyncio.sleep(faults.handshake_delay_s)
        response = self._check_handshake(
            connection, faults=faults, path=parts.path, query=query, model=model, auth=auth,
            auth_problem=auth_problem, beta=beta,
        )
        record.status = response.status_code if response is not None else 101
        if response is None:
            flavour = "openai" if parts.path == OPENAI_PATH else "azure"
            self._accepted[connection] = _Accepted(model or "", flavour, auth or "")
        else:
            log_event(log, "sim_handshake_refused", "refused %s with HTTP %d", parts.path, response.status_code,
                      HTTP_STATUS=response.status_code)
        self._notify()
        return response

    def _check_handshake(
        self,
        connection: ServerConnection,
        *,
        faults: Faults,
        path: str,
        query: dict[str, list[str]],
        model: str | None,
        auth: str | None,
        auth_problem: str | None,
        beta: bool,
    ) -> Response | None:
        forced = faults.handshake_status
        limit = faults.handshake_failures
        if forced is not None and (limit is None or self._forced_failures < limit):
            self._forced_failures += 1
            code, message = _FORCED_BODIES.get(forced, (str(forced), HTTPStatus(forced).phrase))
            response = _json_response(connection, forced, code, message.format(retry=faults.retry_after_s))
            if forced == 429:
                response.headers["Retry-After"] = str(faults.retry_after_s)
            return response
        if path not in (AZURE_PATH, OPENAI_PATH):
            return _json_response(connection, 404, "404", "Resource not found")
        if "api-version" in query:
            return _json_response(connection, 401, "401", _API_VERSION)
        if auth_problem is not None:
            return _json_response(connection, 401, "401", auth_problem)
        if beta:
            return _json_response(connection, 400, "beta_api_shape_disabled", _BETA_HEADER)
        if not model:
            return _json_response(
                connection, 400, "missing_required_parameter", "Missing required parameter: 'model'.", param="model"
            )
        if model in self.options.non_realtime_deployments:
            return _json_response(
                connection,
                400,
                "OpperationNotSupported",
                f"The realtime operation does not work with the specified model, {model}. Please choose different "
                "model and try again. You can learn more about which models can be used with each operation here: "
                "https://go.microsoft.com/fwlink/?linkid=2197993.",
            )
        return None

    # --- sessions ------------------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        accepted = self._accepted.pop(connection, None)
        if accepted is None:  # cannot happen: process_request accepted it
            await connection.close(1011, "handshake state lost")
            return
        opts = self.options
        faults = opts.faults
        index = len(self.sessions)
        session_faults = faults if faults.session_failures is None or index < faults.session_failures else Faults()
        loop = asyncio.get_running_loop()
        core = SimCore(
            opts,
            model=accepted.model,
            now=loop.time(),
            wall_now=self._wall_clock(),
            voice=self.voice,
            prompt_cache=self.prompt_cache,
            flavour=accepted.flavour,
            auth=accepted.auth,
            faults=session_faults,
            rng=random.Random(None if opts.seed is None else f"{opts.seed}/{index}"),
        )
        self.sessions.append(core.record)
        log_event(log, "sim_session_open", "session %s opened (%s)", core.record.session_id, accepted.model,
                  SESSION_ID=core.record.session_id)
        self._notify()
        try:
            await _Connection(self, connection, core, session_faults).run()
        finally:
            record = core.record
            record.ended = True
            self._forget_old_sessions()
            log_event(log, "sim_session_close", "session %s closed with %s", record.session_id, record.close_code,
                      SESSION_ID=record.session_id, CLOSE_CODE=record.close_code)
            self._notify()

    def _forget_old_sessions(self) -> None:
        keep = self.options.keep_sessions
        if keep is None:
            return
        finished = [r for r in self.sessions if r.ended]
        for record in finished[: max(0, len(finished) - keep)]:
            self.sessions.remove(record)


class _Connection:
    """Drives one ``SimCore`` over one WebSocket."""

    def __init__(self, server: SimServer, ws: ServerConnection, core: SimCore, faults: Faults) -> None:
        self._server = server
        self._ws = ws
        self._core = core
        self._faults = faults
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[float, Output]] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._sent = 0
        self._closing = False

    def _enqueue(self, outputs: list[Output]) -> None:
        due = self._loop.time() + self._faults.event_latency_s
        for output in outputs:
            self._queue.put_nowait((due, output))
        self._server._notify()

    async def run(self) -> None:
        """Serve the connection until it closes; a failure inside the simulator closes it with 1011."""
        record = self._core.record
        self._enqueue(self._core.start())
        reader = asyncio.create_task(self._read_loop())
        tasks = {reader, asyncio.create_task(self._send_loop()), asyncio.create_task(self._tick_loop())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            failures = [
                exc
                for task in done
                if not task.cancelled()
                and (exc := task.exception()) is not None
                and not isinstance(exc, ConnectionClosed)
            ]
            if failures:
                log.error("session %s: simulator failure, closing with 1011", record.session_id,
                          exc_info=failures[0])
                with contextlib.suppress(ConnectionClosed):
                    await self._close(1011, "internal simulator error")
            if not reader.done():  # the server closed: let the closing handshake finish
                await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._core.closed = True
            if record.close_code is None:  # the client closed first (or the network did)
                record.close_code = self._ws.close_code if self._ws.close_code is not None else 1006
                record.close_reason = self._ws.close_reason or ""

    async def _read_loop(self) -> None:
        async for message in self._ws:
            self._enqueue(self._core.receive(message, self._loop.time()))
            self._wake.set()

    async def _tick_loop(self) -> None:
        while True:
            self._wake.clear()
            deadline = self._core.next_deadline()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            self._enqueue(self._core.poll(self._loop.time()))

    async def _send_loop(self) -> None:
        record = self._core.record
        while True:
            due, output = await self._queue.get()
            delay = due - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # injected latency: the event is held back on purpose
            if isinstance(output, Close):
                await self._close(output.code, output.reason)
                return
            await self._ws.send(json.dumps(output))
            if self._server.options.keep_event_log:
                record.server_events.append(output)
            self._sent += 1
            self._server._notify()
            if await self._inject_faults():
                return

    async def _close(self, code: int, reason: str) -> None:
        record = self._core.record
        record.close_code, record.close_reason = code, reason
        self._core.closed = True
        await self._ws.close(code, reason)

    async def _inject_faults(self) -> bool:
        """Apply the faults due after this many events; True when the connection is gone."""
        faults, sent, record = self._faults, self._sent, self._core.record
        if faults.drop_after_events == sent:
            record.close_code, record.close_reason = 1006, "dropped (no close frame)"
            self._core.closed = True
            self._ws.transport.abort()
            return True
        if faults.malformed_after_events == sent:
            await self._ws.send('{"type": "response.output_audio.delta", "delta": ')
        if faults.error_after_events == sent:
            event = self._core.fault_error_event(faults.error_code)
            await self._ws.send(json.dumps(event))
            if self._server.options.keep_event_log:
                record.server_events.append(event)
        if faults.close_after_events == sent:
            await self._close(faults.close_code, "simulated server failure")
            return True
        return False


class SimServerThread:
    """A ``SimServer`` on its own event loop in a background thread, for synchronous tests and tools.

    ``with SimServerThread(options) as sim: ... sim.url ... sim.wait_for(lambda: ..., 10)``.
    """

    def __init__(self, options: SimOptions | None = None, **kwargs: Any) -> None:
        self.server = SimServer(options, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kioskd-sim", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sessions(self) -> list[SessionRecord]:
        return self.server.sessions

    def _run(self, coro: Awaitable[T], timeout: float) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def wait_for(self, predicate: Callable[[], T | None], timeout_s: float = DEFAULT_WAIT_S) -> T:
        return self._run(self.server.wait_for(predicate, timeout_s), timeout_s + 5.0)

    def __enter__(self) -> SimServerThread:
        self._thread.start()
        try:
            self._run(self.server.start(), 60.0)
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self.server.stop(), 30.0)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30.0)
        if not self._thread.is_alive():
            self._loop.close()


# --- kioskd sim ------------------------------------------------------------------------------------------


async def _serve_until_signalled(options: SimOptions, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        sim = SimServer(options, host=host, port=port)
        try:
            await sim.start()
        except OSError as exc:
            print(f"kioskd sim: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(sim.url, flush=True)
        print(f"AZURE_OPENAI_ENDPOINT={sim.url}", flush=True)
        note = "only the key given with --api-key" if options.api_key else "any API key"
        print(f"kioskd sim: serving the realtime API on {sim.url} ({note}); Ctrl-C stops it", file=sys.stderr,
              flush=True)
        await stop.wait()
        await sim.stop()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def cli_sim(args: argparse.Namespace) -> int:
    """``kioskd sim --port N --api-key KEY [--host 127.0.0.1]``: serve until SIGINT/SIGTERM, then exit 0."""
    host = str(args.host)
    if not is_loopback_host(host):
        print(f"kioskd sim: --host {host} is not a loopback address; the simulator only binds 127.0.0.1, ::1 "
              "or localhost", file=sys.stderr)
        return EX_USAGE
    port = int(args.port)
    if not 0 <= port <= 65535:
        print(f"kioskd sim: --port {port} is not a TCP port (0-65535; 0 picks a free one)", file=sys.stderr)
        return EX_USAGE
    api_key = args.api_key or None
    register_secret(api_key)
    setup_logging("info")
    options = SimOptions(api_key=api_key, keep_event_log=False, keep_sessions=10)
    return asyncio.run(_serve_until_signalled(options, host.strip("[]"), port))
