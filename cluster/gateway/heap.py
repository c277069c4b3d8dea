"""The gateway process's allocator, set for big messages: freed memory is kept for the next one.

    heap.retain_freed_memory(1 << 30)   # once, at process start, before the servers start

grpc.aio copies a received message on the event loop while it holds the GIL (a bytearray grown
slice by slice, then `bytes()` of it) and an answer once more (into grpc's own slice). glibc's
malloc serves every allocation above its mmap threshold (128 KiB, rising to 32 MiB at most) with
fresh pages from mmap and unmaps them on free, so each of those copies of a 100 MB message also
faults in and zeroes 25,600 new pages: measured on this project's 2-core VM, ~77,000 page faults
and ~275 ms of the loop's thread per echoed 100 MB message, against ~0 and ~41 ms once the pages
are reused (benchmarks/receive_stall.py; the figures are in benchmarks/README.md).

`retain_freed_memory(limit)` puts allocations under `limit` on the heap (M_MMAP_THRESHOLD) and lets
up to `limit` bytes freed at its top stay mapped (M_TRIM_THRESHOLD), so the next big message reuses
pages already faulted in. What it costs: after a big message, the process keeps the heap it grew
for it, up to `limit` (beyond that glibc trims it back), instead of returning it at once. Memory
freed below a chunk that is still in use stays mapped too, as it always does on the heap.
A C library other than glibc (no `mallopt`) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

log = logging.getLogger("tessera")

# glibc's <malloc.h>
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
MAX_LIMIT: Final = 2**31 - 1  # mallopt takes an int


def retain_freed_memory(limit: int) -> bool:
    """Lets this process keep up to `limit` bytes of freed heap for reuse (see the module's doc);
    0 leaves glibc's defaults. True when the settings took effect."""
    if limit <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this process's C library (%s): big messages use fresh pages", name)
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, (ctypes.c_int, ctypes.c_int)
    value = min(limit, MAX_LIMIT)
    # Both or neither: a trim threshold alone does nothing for chunks that are mmap'd anyway.
    done = bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
    if not done:
        log.warning("mallopt refused a %d-byte threshold: big messages use fresh pages", value)
    return done
