"""A kiosk whose budget ran out serves again the next (local) day, without a restart or a wake."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

from kioskd.audio.capture import CaptureBlock
from kioskd.audio.playback import JitterBuffer
from kioskd.budget import Budget, Ledger, SessionSpend, TokenUsage
from kioskd.config import load_settings
from kioskd.daemon import Daemon, RealtimeLink, Speaker, State


async def _never(_speaker: Speaker) -> RealtimeLink:
    raise AssertionError("no session is opened in this test")


def test_budget_exhausted_turns_back_to_listening_on_a_new_day(tmp_path: Path) -> None:
    settings = load_settings(Path("/dev/null"), environ={}, overrides={
        "realtime": {"endpoint": "ws://127.0.0.1:9"}, "budget": {"daily_usd": 0.01, "state_dir": str(tmp_path)}})
    day = [date(2026, 11, 25)]
    budget = Budget(settings.budget, Ledger(tmp_path, today=lambda: day[0]))
    budget.record(SessionSpend(), TokenUsage(audio_out=1000))  # $0.064: today's budget is spent
    daemon = Daemon(settings, speaker=JitterBuffer(settings.audio), open_session=_never, budget=budget)
    daemon.on_mic_state(True, "")
    assert daemon.state is State.BUDGET_EXHAUSTED

    silence16, silence24 = np.zeros(320, np.int16), np.zeros(480, np.int16)

    def feed(blocks: int) -> None:
        for _ in range(blocks):
            n = daemon.counters.capture_blocks + 1
            daemon.on_block(CaptureBlock(silence16, silence24, n * 320, n * 480, 0.0))

    def state() -> State:  # read afresh: the daemon changes it under the feeding
        return daemon.state

    feed(500)
    assert state() is State.BUDGET_EXHAUSTED
    day[0] = date(2026, 11, 26)
    feed(250)
    assert state() is State.LISTENING
    assert daemon.state_reason == "a new day's budget"
