"""kioskd.memory: freed heap goes back to the system, and threads share a bounded number of arenas.

Each case runs in a fresh interpreter so this process's allocator is left as it was."""

from __future__ import annotations

import subprocess
import sys

_PRELUDE = """
import ctypes, sys, threading
from kioskd.memory import limit_malloc_arenas, release_free_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
"""

_TRIM = _PRELUDE + """
blocks = [libc.malloc(32 * 1024) for _ in range(2048)]  # 64 MB, each block below the mmap threshold
for block in blocks:
    libc.memset(block, 1, 32 * 1024)
for block in blocks[:-1]:  # the last one pins the top of the heap, so free() alone gives nothing back
    libc.free(block)
before = rss_mb()
released = release_free_memory()
print(released, before - rss_mb())
"""

_ARENAS = _PRELUDE + """
if sys.argv[1] == "limited":
    assert limit_malloc_arenas()
barrier = threading.Barrier(6)
def work():
    barrier.wait()
    held = [libc.malloc(2000) for _ in range(1000)]
    barrier.wait()
    for block in held:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
sys.stderr.flush()
libc.malloc_stats()  # one "Arena N:" section per arena, on standard error
"""


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result


def test_freed_heap_is_handed_back_to_the_system() -> None:
    released, dropped_mb = run(_TRIM).stdout.split()
    assert released == "True"
    assert float(dropped_mb) >= 56  # of the 64 MB freed


def arenas(mode: str) -> int:
    return sum(line.startswith("Arena ") for line in run(_ARENAS, mode).stderr.splitlines())


def test_six_threads_share_two_arenas_once_limited() -> None:
    assert arenas("default") >= 3  # without the limit glibc gives each new thread an arena of its own
    assert arenas("limited") <= 2
