"""Keep a run's memory from growing with its threads.

glibc gives each thread that allocates its own malloc arena (up to eight per core), and
memory freed in one arena is not reused by another. A batch into a bucket runs every
store request in a worker thread (up to anyio's 40): a 200-photo run into a bucket peaked
at 638 MiB, and at 270 MiB with two arenas, no slower (docs/performance.md). Two is what
``MALLOC_ARENA_MAX=2`` gives; a user's own ``MALLOC_ARENA_MAX`` is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap this process's malloc arenas at :data:`ARENAS` (glibc only; threads created
    from now on share them). Whether the cap was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, ARENAS))
