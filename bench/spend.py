"""P6: what a conversation costs with kioskd, against a session that never closes (the seed script).

Target: reported; once the visitor has gone, billing must stop within ``session.idle_timeout``.

Both scenarios hear exactly the same microphone signal and are billed by the simulator's usage model
(realtime-protocol.md §5.3-5.4: every response bills its whole prompt, audio in at 1 token / 100 ms, out at
1 token / 50 ms, prompt caching), priced with kioskd's default table (gpt-realtime-1.5):

* **kioskd**: the real daemon (:mod:`tests.reliability.fastkiosk`), woken once; the visitor asks ten
  questions, each after the previous answer has finished playing and a one-second pause, then walks away.
  The kiosk then hears three minutes of a quiet hall with passers-by talking and a door banging now and
  then. The daemon closes the session ``idle_timeout_s`` (8 s, the default) after the last answer.
* **never-closing session**: what the seed's reference script does — one realtime session opened at the
  start (``server_vad``, threshold 0.5, 300 ms padding, 200 ms silence, a response for every turn), the
  microphone streamed into it all the time, no wake word, no idle close — fed the very signal the daemon's
  microphone delivered, for the same length of time, and closed only at the end. (It plays nothing; the
  seed's speaker would also echo into its microphone and cost more.)

Accelerated: both run at ``SPEEDUP`` times real time. The server's VAD works in audio time; everything on a
wall clock is divided by the factor (the daemon's idle timeout, the simulator's reply pacing and first-delta
delay), so the figures are those of the same minutes at a kiosk. "Time" below is kiosk time.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SENTENCES, at_level, espeak, machine, room_tone, say, table, write_results
from kioskd.audio.dsp import resample
from kioskd.budget import TokenUsage, price
from kioskd.config import Prices, RealtimeConfig
from kioskd.daemon import DaemonEvent
from kioskd.realtime import session as rt
from kioskd.realtime.auth import ApiKeyAuth
from kioskd.realtime.client import open_session
from kioskd.sim.options import DEFAULT_REPLIES, SimOptions
from kioskd.sim.records import SessionRecord
from kioskd.sim.server import SimServer
from kioskd.sim.usage import Usage
from tests.reliability.fastkiosk import KEY, FastKiosk, fast_settings

NAME = "spend"
SPEEDUP = 10.0
AFTER_S = 180.0
RATE = 24_000
QUESTIONS = (
    "Hello, what time does the museum close today?",
    "Is there a cafe in the building?",
    "Where can I leave my coat?",
    "How much is a ticket for a child?",
    "Are dogs allowed inside?",
    "Which floor has the paintings?",
    "Is there a guided tour in English?",
    "Where are the restrooms?",
    "Can I take photographs?",
    "Thank you, goodbye.",
)
ROOM_DBFS = -60.0  # a quiet hall: below the server VAD's -45 dBFS at threshold 0.5
PASSER_BY_DBFS = -38.0  # someone talking a few metres away: above it


@dataclass
class Bill:
    """Usage by kiosk time: (seconds, usage of one response), in order."""

    responses: list[tuple[float, TokenUsage]] = field(default_factory=list)

    def total(self, after: float = -1.0) -> TokenUsage:
        out = TokenUsage()
        for t, usage in self.responses:
            if t > after:
                out = out + usage
        return out

    def usd(self, after: float = -1.0) -> float:
        return sum(price(u, Prices()) for t, u in self.responses if t > after)


def token_usage(usage: Usage) -> TokenUsage:
    return TokenUsage(text_in=usage.input.text, audio_in=usage.input.audio, cached_text_in=usage.cached.text,
                      cached_audio_in=usage.cached.audio, text_out=usage.output.text, audio_out=usage.output.audio)


def pcm(signal: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(signal * 32768), -32768, 32767), dtype=np.int16)


def hall_after_the_visitor(seed: int = 21) -> np.ndarray:
    """Three minutes of the hall at 24 kHz: room tone, passers-by every 15-35 s, a door now and then."""
    rng = np.random.default_rng(seed)
    pieces = [room_tone(12.0, ROOM_DBFS, rng, RATE)]  # nobody near the kiosk for a while
    total = len(pieces[0])
    i = 0
    while total < AFTER_S * RATE:
        if i % 3 == 2:  # a door bangs: 0.3 s of loud noise
            event = np.asarray(rng.normal(0, 10 ** (-28 / 20), int(0.3 * RATE)), dtype=np.float32)
        else:
            text = SENTENCES[int(rng.integers(len(SENTENCES)))]
            event = resample(at_level(espeak(text, "en-gb" if i % 2 else "en-us"), PASSER_BY_DBFS), 16_000, RATE)
        gap = room_tone(float(rng.uniform(15, 35)), ROOM_DBFS, rng, RATE)
        pieces += [event, gap]
        total += len(event) + len(gap)
        i += 1
    return pcm(np.concatenate(pieces)[: int(AFTER_S * RATE)])


def questions() -> list[np.ndarray]:
    return [pcm(resample(at_level(espeak(q, "en-us"), -24.0), 16_000, RATE)) for q in QUESTIONS]


class RoomTone:
    """The hall's hiss as an endless microphone background (a seeded ten-second loop)."""

    def __init__(self, seed: int = 4) -> None:
        self.loop = pcm(room_tone(10.0, ROOM_DBFS, np.random.default_rng(seed), RATE))
        self.pos = 0

    def __call__(self, n: int) -> np.ndarray:
        out = np.take(self.loop, np.arange(self.pos, self.pos + n), mode="wrap")
        self.pos = (self.pos + n) % len(self.loop)
        return np.asarray(out, dtype=np.int16)


async def with_kioskd(sim: SimServer, state: Path) -> tuple[Bill, dict[str, Any], np.ndarray]:
    settings = fast_settings(state, sim.url, SPEEDUP, {"realtime": {"silence_duration_ms": 500}})
    rng = np.random.default_rng(4)
    bill = Bill()
    async with FastKiosk(settings, speedup=SPEEDUP, background=RoomTone()) as kiosk:
        kiosk.recorded = []

        def on_event(event: DaemonEvent) -> None:
            if event.name == "response_done":
                total = kiosk.ledger.current.usage
                already = bill.total()
                bill.responses.append((kiosk.position_s, _minus(total, already)))

        kiosk.daemon.listeners.append(on_event)
        kiosk.wake()
        for n, question in enumerate(questions()):
            before = len(kiosk.named("response_done"))
            await kiosk.say(question)
            await kiosk.wait_for(lambda b=before: len(kiosk.named("response_done")) > b,  # type: ignore[misc]
                                 f"the answer to question {n + 1}", 60)
            await kiosk.wait_for(lambda: kiosk.buffer.current_item() is None, "the answer to be played", 60)
            await kiosk.say(pcm(room_tone(1.0, ROOM_DBFS, rng, RATE)))  # a breath before the next question
        left = kiosk.position_s
        say(f"  the visitor leaves at {left:.0f} s")
        await kiosk.say(hall_after_the_visitor())
        closes = kiosk.named("session_close")
        info = {"visitor_left_at_s": left, "kiosk_seconds": kiosk.position_s, "sessions": len(closes),
                "close_reasons": [str(c.fields["reason"]) for c in closes],
                "idle_timeout_s": settings.session.idle_timeout_s * SPEEDUP,
                "session_closed_after_leaving_s": _kiosk_time(kiosk, closes[0].t) - left if closes else None}
        mic = np.concatenate(kiosk.recorded)
    return bill, info, mic


def _kiosk_time(kiosk: FastKiosk, monotonic_t: float) -> float:
    """An event's kiosk time, from the blocks fed before it (the feeder's pace is steady)."""
    now = asyncio.get_running_loop().time()
    return kiosk.position_s - (now - monotonic_t) * kiosk.speedup


def _minus(a: TokenUsage, b: TokenUsage) -> TokenUsage:
    return TokenUsage(*(x - y for x, y in zip(_fields(a), _fields(b), strict=True)))


def _fields(u: TokenUsage) -> tuple[int, ...]:
    return (u.text_in, u.audio_in, u.cached_text_in, u.cached_audio_in, u.text_out, u.audio_out)


class _Nothing:
    """The seed script's speaker as far as the protocol core can tell: nothing is ever 'playing'."""

    def current_item(self) -> str | None:
        return None

    def played_samples(self, item_id: str) -> int:
        return 0


async def never_closing(sim: SimServer, mic: np.ndarray, left_at: float) -> tuple[Bill, dict[str, Any]]:
    cfg = RealtimeConfig(endpoint=sim.url, api_key=KEY, silence_duration_ms=200, prefix_padding_ms=300,
                         vad_threshold=0.5)
    client = await open_session(cfg, ApiKeyAuth(KEY), _Nothing())
    block = RATE // 50
    sent = 0
    bill = Bill()

    async def read() -> None:
        async for action in client.events():
            if isinstance(action, rt.Usage):
                usage = TokenUsage(action.text_in, action.audio_in, action.cached_text_in, action.cached_audio_in,
                                   action.text_out, action.audio_out)
                bill.responses.append((sent / RATE, usage))

    reader = asyncio.get_running_loop().create_task(read())
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, offset in enumerate(range(0, len(mic), block)):
        await client.send_audio(mic[offset:offset + block].tobytes())
        sent = offset + block
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 / SPEEDUP - loop.time()))
    await client.close()
    await asyncio.wait_for(reader, 10)
    return bill, {"kiosk_seconds": len(mic) / RATE, "visitor_left_at_s": left_at, "sessions": 1}


def sim_totals(records: list[SessionRecord]) -> dict[str, Any]:
    usages = [token_usage(r.usage) for rec in records for r in rec.responses]
    total = TokenUsage()
    for u in usages:
        total = total + u
    return {"responses": sum(len(rec.responses) for rec in records), "tokens_in": total.tokens_in,
            "cached_in": total.cached_text_in + total.cached_audio_in, "tokens_out": total.tokens_out,
            "usd": sum(price(u, Prices()) for u in usages)}


def main() -> int:
    started = machine()
    options = SimOptions(api_key=KEY, replies=DEFAULT_REPLIES, speed=4.0 * SPEEDUP,
                         first_delta_delay_s=0.05 / SPEEDUP, transcription_delay_s=0.2 / SPEEDUP)

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="kioskd-bench-") as tmp:
            async with SimServer(options) as sim:
                say(f"kioskd: ten questions, then {AFTER_S:.0f} s of the hall, at {SPEEDUP:g}x...")
                kioskd_bill, kioskd_info, mic = await with_kioskd(sim, Path(tmp) / "state")
                await sim.wait_for(lambda: all(r.ended for r in sim.sessions), 20)
                kioskd_sim = sim_totals(sim.sessions)
                first = len(sim.sessions)
                say("the never-closing session, on the same microphone signal...")
                ref_bill, ref_info = await never_closing(sim, mic, kioskd_info["visitor_left_at_s"])
                await sim.wait_for(lambda: all(r.ended for r in sim.sessions), 20)
                ref_sim = sim_totals(sim.sessions[first:])
        left = kioskd_info["visitor_left_at_s"]
        idle = kioskd_info["idle_timeout_s"]
        out: dict[str, Any] = {"speedup": SPEEDUP, "after_visitor_s": AFTER_S}
        for label, bill, info, totals in (("kioskd", kioskd_bill, kioskd_info, kioskd_sim),
                                          ("never_closing", ref_bill, ref_info, ref_sim)):
            everything = bill.total()
            out[label] = {
                **info, "simulator_usage": totals,
                "responses_billed": len(bill.responses),
                "tokens_in": everything.tokens_in, "tokens_out": everything.tokens_out,
                "cached_in": everything.cached_text_in + everything.cached_audio_in,
                "usd": bill.usd(),
                "tokens_after_visitor_left": _tokens(bill.total(after=left)),
                "usd_after_visitor_left": bill.usd(after=left),
                "tokens_after_idle_timeout": _tokens(bill.total(after=left + idle)),
                "usd_per_hour_of_hall_after_leaving": bill.usd(after=left) / AFTER_S * 3600,
            }
        return out

    figures = asyncio.run(run())
    k, r = figures["kioskd"], figures["never_closing"]
    figures["meets_target"] = k["tokens_after_idle_timeout"] == 0
    rows = []
    for label, f in (("kioskd", k), ("never-closing session", r)):
        rows.append((label, f"{f['kiosk_seconds']:.0f}", f["sessions"], f["responses_billed"], f["tokens_in"],
                     f["cached_in"], f["tokens_out"], f"{f['usd']:.4f}", f["tokens_after_visitor_left"],
                     f"{f['usd_after_visitor_left']:.4f}", f["tokens_after_idle_timeout"]))
    print(table(f"P6 spend: ten questions, then {AFTER_S:.0f} s of the hall (kiosk time; gpt-realtime-1.5 prices)",
                ["", "seconds", "sessions", "responses", "tokens in", "cached", "tokens out", "USD",
                 "tokens after leaving", "USD after leaving", f"tokens > {k['idle_timeout_s']:g} s after"], rows))
    print(f"kioskd closed the session {k['session_closed_after_leaving_s']:.1f} s after the visitor's last answer "
          f"({', '.join(k['close_reasons'])}); the never-closing session billed "
          f"${r['usd_per_hour_of_hall_after_leaving']:.2f} per hour of the empty hall")
    print(f"results: {write_results(NAME, figures, started)}")
    return 0


def _tokens(u: TokenUsage) -> int:
    return u.tokens_in + u.tokens_out


if __name__ == "__main__":
    raise SystemExit(main())
