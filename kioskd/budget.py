"""Spend control: price every response's usage, keep a daily ledger that survives restarts, enforce caps.

The ledger is one small JSON file in the state directory, rewritten atomically (temporary file, fsync,
``os.replace``) after every priced response, so a crash mid-write leaves the previous day total intact.
Days are local days: a kiosk's budget resets at the kiosk's midnight, which is what its operator reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, astuple, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from kioskd.config import BudgetConfig, Prices
from kioskd.logs import get_logger

log = get_logger("budget")
LEDGER_NAME = "spend-ledger.json"
HISTORY_DAYS = 31


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one ``response.done`` (cached counts are part of the input counts)."""

    text_in: int = 0
    audio_in: int = 0
    cached_text_in: int = 0
    cached_audio_in: int = 0
    text_out: int = 0
    audio_out: int = 0

    @property
    def tokens_in(self) -> int:
        return self.text_in + self.audio_in

    @property
    def tokens_out(self) -> int:
        return self.text_out + self.audio_out

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def price(usage: TokenUsage, prices: Prices) -> float:
    """USD for ``usage`` at ``prices`` (per 1M tokens); cached input is billed at the cached rate only."""
    cached_text = min(usage.cached_text_in, usage.text_in)
    cached_audio = min(usage.cached_audio_in, usage.audio_in)
    micro = (
        (usage.text_in - cached_text) * prices.text_in
        + cached_text * prices.text_cached_in
        + (usage.audio_in - cached_audio) * prices.audio_in
        + cached_audio * prices.audio_cached_in
        + usage.text_out * prices.text_out
        + usage.audio_out * prices.audio_out
    )
    return micro / 1_000_000


@dataclass
class DayTotals:
    day: str
    usd: float = 0.0
    sessions: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)


class Ledger:
    """Today's spend plus a month of history, persisted in ``state_dir``."""

    def __init__(self, state_dir: Path, *, today: Callable[[], date] = date.today) -> None:
        self.path = Path(state_dir) / LEDGER_NAME
        self._today = today
        self.history: dict[str, float] = {}
        self.current = DayTotals(today().isoformat())
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            day = DayTotals(
                day=str(data["day"]),
                usd=float(data["usd"]),
                sessions=int(data.get("sessions", 0)),
                usage=TokenUsage(**{k: int(v) for k, v in data.get("usage", {}).items()}),
            )
            self.history = {str(k): float(v) for k, v in data.get("history", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Never lose the evidence: keep the unreadable file aside and start from zero.
            aside = self.path.with_suffix(".unreadable")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("spend ledger %s unreadable (%s); kept as %s, starting from zero", self.path, exc, aside)
            return
        self.current = day
        self._roll()

    def _roll(self) -> None:
        today = self._today().isoformat()
        if self.current.day != today:
            self.history[self.current.day] = round(self.current.usd, 6)
            for old in sorted(self.history)[:-HISTORY_DAYS]:
                del self.history[old]
            self.current = DayTotals(today)

    @property
    def spent_today(self) -> float:
        self._roll()
        return self.current.usd

    def add(self, usd: float, usage: TokenUsage) -> None:
        self._roll()
        self.current.usd += usd
        self.current.usage = self.current.usage + usage
        self.save()

    def count_session(self) -> None:
        self._roll()
        self.current.sessions += 1
        self.save()

    def save(self) -> None:
        data: dict[str, Any] = {
            "day": self.current.day,
            "usd": round(self.current.usd, 9),
            "sessions": self.current.sessions,
            "usage": asdict(self.current.usage),
            "history": self.history,
        }
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=directory)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


@dataclass
class SessionSpend:
    usd: float = 0.0
    usage: TokenUsage = field(default_factory=TokenUsage)
    responses: int = 0


class Budget:
    """Prices usage, feeds the ledger, and says when a cap is reached (0 means no cap)."""

    def __init__(self, cfg: BudgetConfig, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger

    @property
    def daily_exhausted(self) -> bool:
        return self.cfg.daily_usd > 0 and self.ledger.spent_today >= self.cfg.daily_usd

    def session_exhausted(self, spend: SessionSpend) -> bool:
        return self.cfg.session_usd > 0 and spend.usd >= self.cfg.session_usd

    def record(self, spend: SessionSpend, usage: TokenUsage) -> float:
        usd = price(usage, self.cfg.prices)
        spend.usd += usd
        spend.usage = spend.usage + usage
        spend.responses += 1
        self.ledger.add(usd, usage)
        return usd
