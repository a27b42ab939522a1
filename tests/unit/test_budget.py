"""Spend: pricing from usage, a ledger that survives restarts and crashes, caps that hold."""

from __future__ import annotations

import json
import os
import stat
from datetime import date
from pathlib import Path

import pytest

from kioskd.budget import LEDGER_NAME, Budget, Ledger, SessionSpend, TokenUsage, price
from kioskd.config import BudgetConfig, Prices


def test_price_uses_the_gpt_realtime_15_defaults() -> None:
    # 1M uncached audio in, 1M audio out: $32 + $64; cached audio at $0.40.
    assert price(TokenUsage(audio_in=1_000_000, audio_out=1_000_000), Prices()) == pytest.approx(96.0)
    assert price(TokenUsage(audio_in=1_000_000, cached_audio_in=1_000_000), Prices()) == pytest.approx(0.40)
    usage = TokenUsage(text_in=59, audio_in=73, cached_audio_in=64, text_out=41, audio_out=147)
    expected = (59 * 4 + 9 * 32 + 64 * 0.4 + 41 * 16 + 147 * 64) / 1e6
    assert price(usage, Prices()) == pytest.approx(expected)


def test_price_follows_a_configured_table() -> None:
    prices = Prices(audio_in=1, audio_out=2, text_in=0, text_out=0, audio_cached_in=0, text_cached_in=0)
    assert price(TokenUsage(audio_in=500_000, audio_out=500_000), prices) == pytest.approx(1.5)


def test_ledger_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = Ledger(state, today=lambda: date(2026, 11, 25))
    ledger.add(0.25, TokenUsage(audio_in=100, audio_out=200))
    ledger.count_session()
    again = Ledger(state, today=lambda: date(2026, 11, 25))
    assert again.spent_today == pytest.approx(0.25)
    assert again.current.sessions == 1 and again.current.usage.audio_out == 200
    assert stat.S_IMODE(os.stat(state / LEDGER_NAME).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_ledger_rolls_over_at_local_midnight(tmp_path: Path) -> None:
    day = [date(2026, 11, 25)]
    ledger = Ledger(tmp_path, today=lambda: day[0])
    ledger.add(1.0, TokenUsage())
    day[0] = date(2026, 11, 26)
    assert ledger.spent_today == 0.0
    ledger.add(0.5, TokenUsage())
    reloaded = Ledger(tmp_path, today=lambda: day[0])
    assert reloaded.spent_today == pytest.approx(0.5)
    assert reloaded.history == {"2026-11-25": 1.0}


def test_a_torn_temporary_file_from_a_crash_changes_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, today=lambda: date(2026, 11, 25))
    ledger.add(0.75, TokenUsage())
    (tmp_path / ".ledger-crashed").write_text('{"day": "2026-11-25", "usd": 9')  # died mid-write
    assert Ledger(tmp_path, today=lambda: date(2026, 11, 25)).spent_today == pytest.approx(0.75)


def test_an_unreadable_ledger_is_kept_aside_not_lost(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text("not json")
    ledger = Ledger(tmp_path, today=lambda: date(2026, 11, 25))
    assert ledger.spent_today == 0.0
    assert (tmp_path / "spend-ledger.unreadable").read_text() == "not json"


def test_caps(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, today=lambda: date(2026, 11, 25))
    budget = Budget(BudgetConfig(daily_usd=1.0, session_usd=0.5, state_dir=tmp_path), ledger)
    spend = SessionSpend()
    assert not budget.daily_exhausted and not budget.session_exhausted(spend)
    usd = budget.record(spend, TokenUsage(audio_out=8000))  # 8000 * $64/1M = $0.512
    assert usd == pytest.approx(0.512)
    assert budget.session_exhausted(spend) and not budget.daily_exhausted
    budget.record(SessionSpend(), TokenUsage(audio_out=8000))
    assert budget.daily_exhausted
    assert json.loads((tmp_path / LEDGER_NAME).read_text())["usd"] == pytest.approx(1.024)
    unlimited = Budget(BudgetConfig(daily_usd=0, session_usd=0, state_dir=tmp_path), ledger)
    assert not unlimited.daily_exhausted and not unlimited.session_exhausted(spend)
