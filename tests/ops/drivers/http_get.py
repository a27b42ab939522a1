"""GET one URL and print ``{"status": code, "body": ...}`` as JSON; run inside the booted test container.

The health endpoint listens on the device's loopback, so the test asks from there, with the device's own
Python (``python -c "$(cat http_get.py)" URL``). An HTTP error status is an answer like any other; a refused
connection prints ``{"status": null, "error": ...}``.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        return {"status": None, "error": str(exc)}
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return {"status": status, "body": body}


if __name__ == "__main__":
    print(json.dumps(get(sys.argv[1])))
