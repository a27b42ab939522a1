"""Log the way kioskd does (kioskd.logs), for the journald test: one structured event, one with a secret.

The secret comes from ``TEST_KIOSKD_SECRET``.
"""

from __future__ import annotations

import logging
import os
import sys

from kioskd.logs import get_logger, log_event, register_secret, setup_logging


def main(secret: str) -> int:
    setup_logging("info")
    register_secret(secret)
    log = get_logger("daemon")
    log_event(log, "session_close", "session closed after %.1f s", 12.3, SESSION_ID="s-42", COST_USD=0.0123)
    log_event(log, "error", "the service refused key %s", secret, level=logging.WARNING, CODE="401")
    log.info("a plain line", extra={"lower_case_field": "dropped by journald"})
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ["TEST_KIOSKD_SECRET"]))  # not argv: journald records the command line
