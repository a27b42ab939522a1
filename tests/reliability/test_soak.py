"""Two hundred visitors, and a bad day on the network: the daemon comes back to listening every time.

The real :class:`~kioskd.daemon.Daemon`, realtime client, budget and jitter buffer converse with the bundled
simulator over real WebSockets, at twenty times real time (:mod:`tests.reliability.fastkiosk`). Before each
wake one fault is drawn (seeded, so a failure can be replayed): credentials rejected, rate limited, a 503,
a handshake that times out, a connection dropped or closed mid-reply, fatal and harmless error events, a
frame that is not JSON, failing responses, a slow server, the session's time cap, the microphone unplugged
at some point of the conversation, a visitor talking over the answer — or nothing at all.

What a fleet operator needs from that day: no crash (no exception escapes any task or handler), no stuck
state (every cycle is back to listening within a bound), no growing memory, every session the server
opened also closed, and a spend ledger that agrees to the token with what the server billed.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kioskd.daemon import State
from kioskd.sim.options import Faults, SimOptions
from kioskd.sim.records import SessionRecord
from kioskd.sim.server import SimServer
from kioskd.sim.voice import ReplyVoice
from tests.reliability.fastkiosk import KEY, FastKiosk, fast_settings, rss_bytes
from tests.reliability.simrecords import billed_usage, priced, shrink, total

CYCLES = 200
WARM_UP = 20
SPEEDUP = 20.0
CYCLE_LIMIT_S = 20.0
SEED = 20260115
REPLIES = ("Yes, of course.", "It is on your left.", "The cafe closes at five.")
QUESTION = "Where is the exit?"
INTERRUPTION = "No, stop."


@dataclass(frozen=True)
class Fault:
    """One kind of trouble: the simulator's faults for the next connection, and what the visitor does."""

    name: str
    weight: int
    faults: Callable[[random.Random], Faults] = lambda rng: Faults()
    session_cap_s: float | None = None
    mic_lost_after: tuple[str, ...] = ()
    barge_in: bool = False


FAULTS = (
    Fault("none", 24),
    Fault("credentials_rejected", 5, lambda rng: Faults(handshake_status=401)),
    Fault("rate_limited", 5, lambda rng: Faults(handshake_status=429, retry_after_s=0)),
    Fault("service_unavailable", 4, lambda rng: Faults(handshake_status=503)),
    Fault("handshake_timeout", 1, lambda rng: Faults(handshake_delay_s=1.5)),
    Fault("dropped", 8, lambda rng: Faults(drop_after_events=rng.randint(3, 30))),
    Fault("closed_1011", 5, lambda rng: Faults(close_after_events=rng.randint(3, 30), close_code=1011)),
    Fault("error_event", 6, lambda rng: Faults(error_after_events=rng.randint(2, 20), error_code="server_error")),
    Fault("fatal_error_event", 3,
          lambda rng: Faults(error_after_events=rng.randint(2, 20), error_code="session_expired")),
    Fault("malformed_frame", 4, lambda rng: Faults(malformed_after_events=rng.randint(2, 20))),
    Fault("failed_responses", 4,
          lambda rng: Faults(fail_responses=rng.choice(["server_error", "rate_limit_exceeded"]))),
    Fault("slow_server", 6, lambda rng: Faults(handshake_delay_s=0.2, event_latency_s=0.03)),
    Fault("session_cap", 6, session_cap_s=0.25),
    Fault("mic_lost", 9, mic_lost_after=("wake", "connected", "speech_started", "response_done")),
    Fault("barge_in", 10, barge_in=True),
)


@dataclass
class Day:
    """What the soak saw, for the assertions and their messages."""

    faults: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    cycle_s: list[float] = field(default_factory=list)
    billed: list[object] = field(default_factory=list)
    harvested: set[int] = field(default_factory=set)
    rss_after_warm_up: int = 0
    rss_at_end: int = 0


def harvest(sessions: list[SessionRecord], day: Day) -> None:
    """Take the billed usage of every session that has ended, then let go of its audio."""
    for index, record in enumerate(sessions):
        if record.ended and index not in day.harvested:
            day.harvested.add(index)
            day.billed.extend(billed_usage(record))
            shrink(record)


@dataclass(frozen=True)
class Visitor:
    """What the visitor says: a question, and the words spoken over the answer in a barge-in."""

    question: np.ndarray
    interruption: np.ndarray


async def one_cycle(kiosk: FastKiosk, sim: SimServer, fault: Fault, rng: random.Random, visitor: Visitor) -> None:
    sim.options.seed = rng.randrange(2**32)  # repeatable, and every session's ids its own
    sim.options.faults = fault.faults(rng)
    sim.options.session_cap_s = fault.session_cap_s or 30 * 60
    before = len(kiosk.events)
    kiosk.wake()
    said = [kiosk.say(visitor.question)]
    if fault.barge_in:
        said.append(kiosk.say(np.zeros(int(0.45 * 24_000), dtype=np.int16)))
        said.append(kiosk.say(visitor.interruption))
    if fault.mic_lost_after:
        point = rng.choice(fault.mic_lost_after)
        ended = ("session_close", "connect_failed")
        await kiosk.wait_for(lambda: kiosk.named(point, before) or any(kiosk.named(n, before) for n in ended),
                             f"{point} (to unplug the microphone)", CYCLE_LIMIT_S)
        kiosk.lose_mic()
    await kiosk.wait_for(
        lambda: kiosk.idle and (kiosk.named("session_close", before) or kiosk.named("connect_failed", before)),
        f"the daemon to be back at rest after fault {fault.name!r}", CYCLE_LIMIT_S)
    if fault.mic_lost_after:
        assert kiosk.daemon.state is State.DEGRADED
        kiosk.restore_mic()
    await kiosk.wait_for(lambda: kiosk.daemon.state is State.LISTENING, "listening", CYCLE_LIMIT_S)
    await asyncio.wait_for(asyncio.gather(*said), CYCLE_LIMIT_S)  # the visitor has finished speaking
    kiosk.check_session_task()


def test_two_hundred_conversations_through_random_faults(tmp_path: Path) -> None:
    voice = ReplyVoice()
    visitor = Visitor(np.frombuffer(voice.pcm(QUESTION), dtype="<i2"),
                      np.frombuffer(voice.pcm(INTERRUPTION), dtype="<i2"))
    rng = random.Random(SEED)
    day = Day()

    async def scenario() -> None:
        options = SimOptions(api_key=KEY, replies=REPLIES, speed=50.0, first_delta_delay_s=0.005,
                             transcription_delay_s=0.01, seed=SEED)
        async with SimServer(options) as sim:
            settings = fast_settings(tmp_path / "state", sim.url, SPEEDUP,
                                     {"realtime": {"connect_timeout_s": 1.0}, "session": {"idle_timeout_s": 0.1}})
            async with FastKiosk(settings, speedup=SPEEDUP) as kiosk:
                loop = asyncio.get_running_loop()
                for cycle in range(CYCLES):
                    fault = rng.choices(FAULTS, weights=[f.weight for f in FAULTS])[0]
                    day.faults[fault.name] += 1
                    started = loop.time()
                    try:
                        await one_cycle(kiosk, sim, fault, rng, visitor)
                    except AssertionError as exc:
                        raise AssertionError(f"cycle {cycle} ({fault.name}): {exc}") from None
                    day.cycle_s.append(loop.time() - started)
                    harvest(sim.sessions, day)
                    kiosk.forget_log()
                    if cycle + 1 == WARM_UP:
                        day.rss_after_warm_up = rss_bytes()
                sim.options.faults = Faults()
                await sim.wait_for(lambda: all(r.ended for r in sim.sessions), 20)
                harvest(sim.sessions, day)
                day.rss_at_end = rss_bytes()
                day.closes.update(str(e.fields["reason"]) for e in kiosk.named("session_close"))

                print(f"soak: {CYCLES} cycles, {len(sim.sessions)} sessions, faults {dict(day.faults)}, "
                      f"closes {dict(day.closes)}, cycle p50 {np.median(day.cycle_s):.3f} s, "
                      f"max {max(day.cycle_s):.3f} s, RSS {day.rss_after_warm_up >> 20} -> {day.rss_at_end >> 20} MiB")
                assert kiosk.crashes == [], kiosk.crashes
                assert kiosk.tracebacks() == []
                # Every session the server opened has ended, and the daemon counted each one it used.
                assert len(sim.sessions) >= kiosk.daemon.counters.sessions > CYCLES // 2
                assert all(r.close_code is not None for r in sim.sessions)
                # The ledger agrees with what the server billed: every token, and the dollars priced alike.
                billed = list(day.billed)
                ledger = kiosk.ledger.current
                assert ledger.usage == total(billed), (ledger.usage, total(billed))  # type: ignore[arg-type]
                assert math.isclose(ledger.usd, priced(billed, settings.budget.prices),  # type: ignore[arg-type]
                                    rel_tol=1e-12, abs_tol=1e-15)
                assert ledger.sessions == kiosk.daemon.counters.sessions

    asyncio.run(scenario())
    assert sum(day.faults.values()) == CYCLES and all(day.faults[f.name] for f in FAULTS), day.faults
    assert day.closes["idle"] > 0 and day.closes["connection_lost"] > 0, day.closes
    growth = day.rss_at_end / day.rss_after_warm_up - 1
    assert growth < 0.10, f"RSS grew {growth:.1%} ({day.rss_after_warm_up >> 20} -> {day.rss_at_end >> 20} MiB)"
