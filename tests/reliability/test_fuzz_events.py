"""Whatever a server sends, the kiosk keeps running.

Three layers, each fed by the strategies in :mod:`tests.reliability.fuzzevents`:

1. the protocol core: :meth:`RealtimeSession.handle` never raises, returns only actions, and never reports
   more of a reply as heard than was received (nor truncates a reply nobody heard);
2. the daemon's side of it: every action a fuzzed session produces goes through ``Daemon._apply``, which
   either carries on or names a reason to close — it never raises;
3. the whole path over a real WebSocket: a server sends fuzzed frames after a proper set-up, and the real
   daemon (accelerated, :mod:`tests.reliability.fastkiosk`) ends the session cleanly and listens again, with
   no exception escaping anywhere.

Examples are derandomised so the suite is repeatable; ``KIOSKD_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kioskd.audio.playback import JitterBuffer
from kioskd.budget import Budget, Ledger
from kioskd.daemon import ActiveSession, CloseReason, Daemon, State
from kioskd.realtime import session as rt
from kioskd.realtime.events import parse_server_event
from tests.reliability.fastkiosk import FastKiosk, fast_settings
from tests.reliability.fuzzevents import EVENT_TYPES, events, frames

SCALE = int(os.environ.get("KIOSKD_FUZZ_SCALE", "1"))
# Repeatable: the same examples on every machine and every run (no example database), and a failure is
# reported as found rather than spending a minute shrinking it.
FUZZ = {"deadline": None, "derandomize": True, "database": None, "phases": (Phase.explicit, Phase.generate),
        "suppress_health_check": [HealthCheck.too_slow]}
ACTION_TYPES = (rt.Send, rt.PlayAudio, rt.FlushPlayback, rt.SpeechStarted, rt.SpeechStopped, rt.Transcript,
                rt.ResponseStarted, rt.ResponseDone, rt.Usage, rt.SessionReady, rt.Truncated, rt.ServerError,
                rt.SessionEnded)


@pytest.fixture(autouse=True)
def _quiet_kioskd_log() -> None:
    """Thousands of fuzzed events log thousands of warnings; they are not what is checked here."""
    logging.getLogger("kioskd").setLevel(logging.CRITICAL)


class Speaker:
    """What the core sees of the speaker: the last item given audio is playing, with ``over`` extra samples
    reported as played beyond what arrived (a device callback racing the event loop)."""

    def __init__(self, over: int) -> None:
        self.over = over
        self.received: dict[str, int] = {}
        self.playing: str | None = None

    def current_item(self) -> str | None:
        return self.playing

    def played_samples(self, item_id: str) -> int:
        return self.received.get(item_id, 0) + self.over

    def take(self, actions: list[rt.Action]) -> None:
        for action in actions:
            if isinstance(action, rt.PlayAudio):
                self.received[action.item_id] = self.received.get(action.item_id, 0) + len(action.pcm) // 2
                self.playing = action.item_id
            elif isinstance(action, rt.FlushPlayback):
                self.playing = None


def parsed(event: Any) -> Any:
    """The event as the transport would hand it over: through JSON and the tolerant parser when possible."""
    try:
        return parse_server_event(json.dumps(event))
    except (ValueError, TypeError):
        return event


@settings(max_examples=1500 * SCALE, **FUZZ)  # type: ignore[arg-type]
@given(st.lists(events(), min_size=1, max_size=30), st.integers(min_value=0, max_value=48_000))
def test_the_protocol_core_never_raises_and_never_overstates_what_was_heard(
        sequence: list[Any], over: int) -> None:
    speaker = Speaker(over)
    core = rt.RealtimeSession(speaker)
    for event in sequence:
        received_before = {item: core.received_samples(item) for item in ("item_a", "item_b", "item_c")}
        actions = core.handle(parsed(event))
        assert isinstance(actions, list)
        assert all(isinstance(a, ACTION_TYPES) for a in actions), actions
        for action in actions:
            if isinstance(action, rt.Send) and action.event.get("type") == "conversation.item.truncate":
                item, end_ms = action.event["item_id"], action.event["audio_end_ms"]
                assert 0 < end_ms <= received_before.get(item, core.received_samples(item)) // 24
        speaker.take(actions)


def test_a_huge_expiry_time_is_a_malformed_event_not_an_exception() -> None:
    """``session.expires_at`` beyond a float's range (JSON allows any integer) must not escape ``handle``."""
    core = rt.RealtimeSession(Speaker(0))
    actions = core.handle({"type": "session.updated", "session": {"expires_at": 10**400}})
    assert [type(a) for a in actions] == [rt.ServerError]


def test_an_oversized_delta_is_played_not_refused() -> None:
    """16 MB of audio in one delta (far more than the service sends) still decodes and plays."""
    core = rt.RealtimeSession(Speaker(0))
    pcm = bytes(16 * 1024 * 1024)
    actions = core.handle({"type": "response.output_audio.delta", "item_id": "item_a", "response_id": "resp_1",
                           "delta": base64.b64encode(pcm).decode("ascii")})
    assert [type(a) for a in actions] == [rt.PlayAudio]
    assert core.received_samples("item_a") == len(pcm) // 2


# -- the daemon's handling of every action ---------------------------------------------------------------

_STATE_DIR = Path(tempfile.mkdtemp(prefix="kioskd-fuzz-ledger-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _daemon() -> Daemon:
    settings_ = fast_settings(_STATE_DIR, "ws://127.0.0.1:9", 1.0)
    buffer = JitterBuffer(settings_.audio)

    async def never(speaker: Any) -> Any:
        raise AssertionError("no connection is opened here")

    daemon = Daemon(settings_, speaker=buffer, open_session=never, budget=Budget(settings_.budget,
                                                                                  Ledger(_STATE_DIR)))
    daemon.session = ActiveSession("fuzz", "hey_jarvis", daemon.clock())
    daemon.state = State.CONVERSING
    return daemon


@settings(max_examples=1000 * SCALE, **FUZZ)  # type: ignore[arg-type]
@given(st.lists(events(), min_size=1, max_size=25))
def test_the_daemon_applies_whatever_the_core_makes_of_fuzzed_events(sequence: list[Any]) -> None:
    daemon = _daemon()
    core = rt.RealtimeSession(daemon.speaker)
    for event in sequence:
        try:
            actions = core.handle(parsed(event))
        except Exception:  # the core's own failures are the first test's business
            continue
        for action in actions:
            reason = daemon._apply(action, link=None)  # type: ignore[arg-type]
            assert reason is None or isinstance(reason, CloseReason)


def test_a_bill_beyond_a_float_does_not_kill_the_session_task() -> None:
    """A ``response.done`` claiming 10**400 tokens: the daemon must log it and go on (or close), not raise."""
    daemon = _daemon()
    core = rt.RealtimeSession(daemon.speaker)
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "usage": {
        "input_token_details": {"text_tokens": 10**400, "audio_tokens": 0},
        "output_token_details": {"text_tokens": 0, "audio_tokens": 0}}}}
    for action in core.handle(done):
        reason = daemon._apply(action, link=None)  # type: ignore[arg-type]
        assert reason is None or isinstance(reason, CloseReason)


# -- the whole path, over a real WebSocket ------------------------------------------------------------------

class FuzzServer:
    """A realtime endpoint that sets the session up properly, then sends the frames it is given."""

    def __init__(self, sent: list[str | bytes], ending: str) -> None:
        self.sent = sent
        self.ending = ending
        self.opened = 0
        self.closed = 0
        self.url = ""
        self.all_closed = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.opened += 1
        try:
            await ws.send(json.dumps({"type": "session.created", "event_id": "event_0",
                                      "session": {"type": "realtime", "id": "sess_fuzz"}}))
            async for message in ws:
                event = json.loads(message)
                if event.get("type") != "session.update":
                    continue
                await ws.send(json.dumps({"type": "session.updated", "event_id": "event_1",
                                          "session": {**event["session"], "id": "sess_fuzz"}}))
                for frame in self.sent:
                    await ws.send(frame)
                if self.ending == "close":
                    await ws.close(1000)
                elif self.ending == "server_error":
                    await ws.close(1011, "fuzzing")
                elif self.ending == "drop":
                    ws.transport.abort()
        except ConnectionClosed:
            pass  # the daemon hung up first: what it should do with a stream of nonsense
        finally:
            self.closed += 1
            if self.closed == self.opened:
                self.all_closed.set()

    async def __aenter__(self) -> FuzzServer:
        self._server = await serve(self.handler, "127.0.0.1", 0, max_size=None, compression=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()


async def _converse_with(sent: list[str | bytes], ending: str, state_dir: Path) -> None:
    async with FuzzServer(sent, ending) as server:
        settings_ = fast_settings(state_dir, server.url, 20.0, {"session": {"max_session_s": 1.5}})
        async with FastKiosk(settings_) as kiosk:
            kiosk.wake()
            await kiosk.wait_for(lambda: kiosk.named("session_close") or kiosk.named("connect_failed"),
                                 "the session to end", 20)
            await kiosk.wait_for(lambda: kiosk.idle and kiosk.daemon.state is State.LISTENING, "listening", 20)
            kiosk.check_session_task()
            assert kiosk.named("connected"), "the fuzz server sets the session up properly"
            assert kiosk.crashes == []
            assert kiosk.tracebacks() == []
        await _connection_ended(server)


async def _connection_ended(server: FuzzServer, limit_s: float = 5.0) -> None:
    """The daemon has closed the session; its socket must be gone too, not left for the server to time out."""
    try:
        await asyncio.wait_for(server.all_closed.wait(), limit_s)
    except TimeoutError:
        raise AssertionError(f"the session closed, but the server still had the connection open {limit_s:g} s "
                             "later (the client's close handshake never finished)") from None
    assert server.opened == server.closed == 1


def test_a_fatal_error_with_events_still_queued_behind_it_closes_the_socket(tmp_path: Path) -> None:
    """The server reports a fatal error and goes on sending; the daemon stops reading and closes. The close
    handshake must not wait behind the unread events until the server gives up on it."""
    sent: list[str | bytes] = [json.dumps({"type": "error", "error": {"code": "invalid_api_key",
                                                                      "message": "the key was revoked"}})]
    sent += [json.dumps({"type": "rate_limits.updated", "rate_limits": []})] * 40
    asyncio.run(_converse_with(sent, "server_error", tmp_path))


@settings(max_examples=60 * SCALE, **FUZZ)  # type: ignore[arg-type]
@given(st.lists(frames(), max_size=20), st.sampled_from(["close", "server_error", "drop", "stay_open"]))
def test_fuzzed_frames_over_a_websocket_end_the_session_cleanly(sent: list[str | bytes], ending: str) -> None:
    with tempfile.TemporaryDirectory(prefix="kioskd-fuzz-") as tmp:
        asyncio.run(_converse_with(sent, ending, Path(tmp)))


def test_every_event_type_the_core_handles_is_fuzzed() -> None:
    """The strategies cover each handler of the core, so a new handler cannot slip past the fuzzing."""
    handled = set(rt.RealtimeSession._HANDLERS)
    assert handled <= set(EVENT_TYPES)
