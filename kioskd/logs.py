"""Logging for kioskd: journald with structured fields under systemd, plain stderr elsewhere.

Structured fields are passed as ``extra`` with UPPER_CASE names (journald drops lowercase ones), e.g.::

    log_event(log, "session_close", "session closed after %.1f s", 12.3, SESSION_ID=sid, COST_USD=0.01)

Every handler carries :class:`RedactSecrets`, so a registered secret (API key, bearer token) is replaced
by ``[redacted]`` wherever it would appear: message, arguments, fields or exception text.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

LOGGER_NAME = "kioskd"
REDACTED = "[redacted]"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MIN_SECRET_LEN = 6


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (keys, tokens, identity headers)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key.isupper() and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class FieldsFormatter(logging.Formatter):
    """``time level message [KEY=value ...]`` — the journald fields, made visible on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = " ".join(
            f"{k}={v}" for k, v in sorted(vars(record).items()) if k.isupper() and k != "SYSLOG_IDENTIFIER"
        )
        return f"{base} [{fields}]" if fields else base


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def log_event(logger: logging.Logger, event: str, msg: str, *args: Any, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log ``msg`` with ``KIOSKD_EVENT=event`` and the given UPPER_CASE fields."""
    extra = {"KIOSKD_EVENT": event}
    for key, value in fields.items():
        if value is not None:
            extra[key.upper()] = value if isinstance(value, str) else str(value)
    logger.log(level, msg, *args, extra=extra)


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="kioskd")
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_logging(level: str = "info", *, stream: Any = None) -> logging.Handler:
    """Configure the ``kioskd`` logger once; journald when ``JOURNAL_STREAM`` is set, else stderr."""
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM") and stream is None:
        handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler
