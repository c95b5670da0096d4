"""
Giving memory back to the system, now and then: garbage collected, then the
C heap's free pages released.

Bulk transfers and TLS records go through glibc's malloc in pieces of 16 to
256 KiB (socket reads, decrypted records, HTTP/2 frames).  Freed, they leave
holes in the middle of the heap that glibc only hands back to the kernel
from the top, so a daemon kept its peak for ever: the soak benchmark
(C{benchmarks/soak.py}) measured 7 MiB free inside the service's heap a
minute after the load had stopped.  C{malloc_trim(0)} releases the free
pages wherever they are (C{MADV_DONTNEED}); it takes a millisecond or two on
a daemon's heap, so every L{TRIM_INTERVAL} seconds costs nothing that shows.

Before that, a full garbage collection: requests leave reference cycles
behind (Deferreds, failures), which Python's collector takes only when enough
new objects have been allocated since its last full pass, so a daemon that
went quiet kept the last minutes' garbage (~25,000 blocks in the soak) for
ever.  What exists when the daemon starts (modules, configuration) is frozen
out of the collector's sight first (C{gc.freeze}), so that each pass scans
only what the traffic made: a few milliseconds.

Where the C library has no C{malloc_trim} (not glibc), only the collection
is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall

__all__ = ["TRIM_INTERVAL", "start_trimming", "tidy", "trim"]

#: Seconds between two trims.
TRIM_INTERVAL = 20.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return function


_TRIM = _malloc_trim()


def trim() -> bool:
    """Give the heap's free pages back; whether the C library could."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def tidy() -> None:
    """Collect the garbage, then give the heap's free pages back."""
    gc.collect()
    trim()


def start_trimming(
    clock: Any, interval: float = TRIM_INTERVAL, how: Callable[[], object] = tidy
) -> LoopingCall:
    """
    Freeze what exists now out of the garbage collector's passes, then
    L{tidy} every C{interval} seconds on C{clock} (the reactor).
    """
    gc.freeze()
    loop = LoopingCall(how)
    loop.clock = clock
    loop.start(interval, now=False)
    return loop
