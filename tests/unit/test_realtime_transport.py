"""Close codes as reasons, and the server's Retry-After hint, read the way RFC 9110 writes it."""

from __future__ import annotations

import pytest

from kioskd.realtime.transport import describe_close, parse_retry_after


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (1000, "", "closed normally"),
        (1001, "Your session hit the maximum duration of 30 minutes.",
         "session expired: Your session hit the maximum duration of 30 minutes."),
        (1001, "", "session expired"),
        (1006, "", "connection dropped"),
        (None, "", "connection dropped"),
        (1011, "", "server error"),
        (1013, "", "server restarting, try again later"),
        (4000, "custom", "closed with code 4000: custom"),
    ],
)
def test_close_codes_become_reasons(code: int | None, reason: str, expected: str) -> None:
    assert describe_close(code, reason) == expected


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("20") == 20.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 60) == 0.0  # already past


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "-inf"])
def test_retry_after_that_means_nothing_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_a_negative_retry_after_is_now() -> None:
    assert parse_retry_after("-5") == 0.0
