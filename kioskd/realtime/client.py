"""One realtime session over a live WebSocket: the protocol core driven by the transport.

:func:`open_session` does the whole set-up — credentials, connect, ``session.update``, wait for the server
to confirm it — and fails with one clear :class:`RealtimeConnectError` if any step does. What it returns
streams microphone audio up (:meth:`RealtimeClient.send_audio`) and turns server frames into
:mod:`~kioskd.realtime.session` actions (:meth:`RealtimeClient.events`), sending on its own the events the
core asks for (a barge-in truncate), so the daemon only plays, flushes, logs and bills.

The daemon owns the event loop: typically one task iterates :meth:`~RealtimeClient.events` while the
capture path calls :meth:`~RealtimeClient.send_audio`; both are safe to use at the same time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any

from kioskd.config import RealtimeConfig
from kioskd.logs import get_logger
from kioskd.realtime import events as ev
from kioskd.realtime.auth import Authenticator, AuthError
from kioskd.realtime.events import ProtocolError
from kioskd.realtime.session import (
    Action,
    PlaybackView,
    RealtimeSession,
    Send,
    ServerError,
    SessionEnded,
    SessionReady,
)
from kioskd.realtime.transport import ConnectionEnded, RealtimeConnectError, RealtimeConnection, connect

log = get_logger("realtime.client")


class RealtimeSetupError(RealtimeConnectError):
    """Connected, but the session never became ready (refused ``session.update``, closed, or too slow)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class RealtimeClient:
    """A ready realtime session: audio up, actions out, close when done."""

    def __init__(self, connection: RealtimeConnection, core: RealtimeSession, early: list[Action]) -> None:
        self.connection = connection
        self.core = core
        """The protocol state (ready, active response, usage totals, deadline)."""
        self._early = list(early)
        self._closed = False

    @property
    def session_id(self) -> str | None:
        session = self.core.session or {}
        value = session.get("id")
        return value if isinstance(value, str) else None

    async def send(self, event: Mapping[str, Any]) -> bool:
        """Send a client event; False if the connection is already gone (``events()`` says why)."""
        try:
            await self.connection.send(event)
        except ConnectionEnded:
            return False
        return True

    async def send_audio(self, pcm24k: bytes) -> bool:
        """Stream microphone audio (PCM16 mono 24 kHz); False if the connection is already gone."""
        if not pcm24k:
            return True
        return await self.send(ev.input_audio_append(pcm24k))

    async def events(self) -> AsyncIterator[Action]:
        """Every action the server's events call for, until the session ends (the last one is
        :class:`~kioskd.realtime.session.SessionEnded`).

        :class:`~kioskd.realtime.session.Send` actions have already been sent when they are yielded; they
        are passed on so the daemon can log what was told to the server.
        """
        while self._early:
            yield self._early.pop(0)
        while True:
            try:
                event = await self.connection.receive()
            except ProtocolError as exc:
                actions = self.core.protocol_error(str(exc))
            except ConnectionEnded as exc:
                actions = self.core.connection_lost(exc.code, exc.description)
            else:
                actions = self.core.handle(event)
            for action in actions:  # in order: a barge-in's flush reaches the daemon before the truncate goes out
                if isinstance(action, Send):
                    await self.send(action.event)
                elif isinstance(action, SessionEnded):
                    await self.close()
                yield action
            if self.core.ended is not None:
                await self.close()
                return

    async def close(self) -> None:
        """Close the WebSocket (normal closure); safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        await self.connection.close()

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def open_session(
    cfg: RealtimeConfig,
    auth: Authenticator,
    playback: PlaybackView,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> RealtimeClient:
    """Connect, configure, and return once the server has confirmed the session configuration.

    Raises a :class:`RealtimeConnectError` subclass (credentials, handshake, set-up) with a message fit
    for the log; its ``retryable`` says whether trying again later can help.
    """
    try:
        async with asyncio.timeout(cfg.connect_timeout_s):
            headers = await auth.headers()
    except TimeoutError:
        raise AuthError(f"no credential within {cfg.connect_timeout_s:g} s (identity endpoint too slow)") from None
    connection = await connect(cfg.url, headers, open_timeout=cfg.connect_timeout_s)
    core = RealtimeSession(playback, clock=clock)
    update = ev.session_update(cfg)
    try:
        async with asyncio.timeout(cfg.setup_timeout_s):
            early = await _configure(connection, core, update)
    except TimeoutError:
        await connection.close()
        raise RealtimeSetupError(
            f"{connection.where}: the server did not confirm the session configuration within "
            f"{cfg.setup_timeout_s:g} s", retryable=True) from None
    except BaseException:
        await connection.close()
        raise
    client = RealtimeClient(connection, core, early)
    for problem in _config_mismatches(update["session"], core.session or {}):
        log.warning("the server changed the session configuration: %s", problem)
    log.debug("realtime session %s ready", client.session_id)
    return client


async def _configure(connection: RealtimeConnection, core: RealtimeSession, update: Mapping[str, Any]) -> list[Action]:
    """Send ``session.update`` and read until ``session.updated``; return the actions seen on the way."""
    seen: list[Action] = []
    for action in core.configure(update):
        if isinstance(action, Send):
            await _send_or_fail(connection, action.event)
    while not core.ready:
        try:
            event = await connection.receive()
        except ProtocolError as exc:
            actions = core.protocol_error(str(exc))
        except ConnectionEnded as exc:
            actions = core.connection_lost(exc.code, exc.description)
        else:
            actions = core.handle(event)
        for action in actions:
            if isinstance(action, ServerError) and action.fatal:
                raise RealtimeSetupError(
                    f"{connection.where}: the server refused the session configuration: "
                    f"{action.code or 'error'}: {action.message}", retryable=False)
            if isinstance(action, SessionEnded):
                raise RealtimeSetupError(
                    f"{connection.where}: the connection ended during set-up: {action.reason}", retryable=True)
            if isinstance(action, Send):
                await _send_or_fail(connection, action.event)
            if not isinstance(action, SessionReady):
                seen.append(action)
    return seen


async def _send_or_fail(connection: RealtimeConnection, event: Mapping[str, Any]) -> None:
    try:
        await connection.send(event)
    except ConnectionEnded as exc:
        raise RealtimeSetupError(f"{connection.where}: the connection ended during set-up: {exc.description}",
                                 retryable=True) from None


_CHECKED = (
    ("audio", "output", "voice"),
    ("audio", "output", "format"),
    ("audio", "input", "format"),
    ("audio", "input", "turn_detection", "type"),
    ("instructions",),
)


def _config_mismatches(sent: Mapping[str, Any], echoed: Mapping[str, Any]) -> list[str]:
    """Settings the server's ``session.updated`` reports differently from what we asked for."""
    problems = []
    for path in _CHECKED:
        want: Any = sent
        got: Any = echoed
        for key in path:
            want = want.get(key) if isinstance(want, Mapping) else None
            got = got.get(key) if isinstance(got, Mapping) else None
        if want is not None and got is not None and want != got:
            shown = "(differs)" if path == ("instructions",) else f"{got!r} instead of {want!r}"
            problems.append(f"{'.'.join(path)} is {shown}")
    return problems
