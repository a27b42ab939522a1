"""What the simulator billed, read from the events it really sent, and how to keep its records small.

The simulator counts a response's usage when it generates ``response.done``; when a fault drops the
connection before that event leaves, the client never hears of it (the real service bills such a response
all the same). What a client can be held to is the usage in the ``response.done`` events that went out, so
that is what :func:`billed_usage` adds up, in the same per-response shape the daemon prices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kioskd.budget import TokenUsage, price
from kioskd.config import Prices
from kioskd.sim.records import SessionRecord


def _count(details: Any, name: str) -> int:
    value = details.get(name, 0) if isinstance(details, Mapping) else 0
    return int(value or 0)


def usage_from_wire(usage: Mapping[str, Any]) -> TokenUsage:
    """A ``response.done`` usage object as the ledger's token counts."""
    inputs = usage.get("input_token_details") or {}
    cached = inputs.get("cached_tokens_details") or {}
    outputs = usage.get("output_token_details") or {}
    return TokenUsage(
        text_in=_count(inputs, "text_tokens"),
        audio_in=_count(inputs, "audio_tokens"),
        cached_text_in=_count(cached, "text_tokens"),
        cached_audio_in=_count(cached, "audio_tokens"),
        text_out=_count(outputs, "text_tokens"),
        audio_out=_count(outputs, "audio_tokens"),
    )


def billed_usage(record: SessionRecord) -> list[TokenUsage]:
    """The usage of every ``response.done`` the simulator sent in this session, in order."""
    found = []
    for event in record.server_events:
        if event.get("type") != "response.done":
            continue
        usage = (event.get("response") or {}).get("usage")
        if isinstance(usage, Mapping):
            found.append(usage_from_wire(usage))
    return found


def total(usages: Iterable[TokenUsage]) -> TokenUsage:
    out = TokenUsage()
    for usage in usages:
        out = out + usage
    return out


def priced(usages: Iterable[TokenUsage], prices: Prices) -> float:
    """Dollars for these responses, priced one by one and summed in order, as the ledger does."""
    usd = 0.0
    for usage in usages:
        usd += price(usage, prices)
    return usd


def shrink(record: SessionRecord) -> None:
    """Drop an ended session's audio and event logs (hundreds of sessions would hold hundreds of MB)."""
    record.client_events.clear()
    record.server_events.clear()
    record.user_turns.clear()
    record.input_pcm = bytearray()
