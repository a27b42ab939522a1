"""Keep the listening daemon's resident memory down to what it uses (glibc's allocator, through ctypes).

Two things make a Python process on glibc sit well above its live memory, both measured on ``kioskd run``
with ``bench/memory.py``:

* freed memory stays in the heap: loading the wake model or finishing a conversation frees tens of MB that
  glibc keeps for reuse, so the daemon would listen at its high-water mark. :func:`release_free_memory`
  (``malloc_trim(0)``) hands those pages back; the daemon calls it each time it settles into listening.
  It takes well under a millisecond when there is little to return.
* every thread that allocates may get an arena of its own (up to eight per core), and free memory in those
  arenas is not returned by ``malloc_trim``: a conversation left ~9 MB behind that way.
  :func:`limit_malloc_arenas` caps them at two (the main thread's and one the other threads share), the
  figure commonly advised for long-running services; kioskd's other threads (audio callbacks, the wake
  worker) allocate little, so they hardly contend for it.

With another C library (musl) neither call exists and both do nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc_function(name: str, *argtypes: Any) -> Any:
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


_MALLOC_TRIM = _libc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)


def release_free_memory() -> bool:
    """Return free heap pages to the system; True if any were released."""
    return _MALLOC_TRIM is not None and _MALLOC_TRIM(0) == 1


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let the allocator keep at most ``arenas`` arenas; call before starting threads. True if it took."""
    return _MALLOPT is not None and _MALLOPT(_M_ARENA_MAX, arenas) == 1
