"""A serving process's allocator, set for big messages: freed memory is kept for the next one.

    heap.one_arena()                    # first thing in the process, before any thread starts
    heap.retain_freed_memory(1 << 30)   # then once, before the servers start
    heap.prefault(nbytes, 1 << 30)      # optional, once Ray has started (see below)
    os.environ.update(heap.environment(1 << 30))  # the same for processes started later

The gateway's copies of a 100 MB message (grpc.aio's, on the event loop with the GIL held: a
bytearray grown slice by slice, `bytes()` of it, the answer once more into grpc's slice) and the
conversions' (in worker threads) are all malloc'd. With glibc's defaults each of them is served
with fresh pages and given back on free, so every big message faults in and zeroes 25,600 new pages
per copy: measured on this project's 2-core VM, ~77,000 page faults and ~275 ms of the loop's
thread per echoed 100 MB message, against ~0 and ~41 ms once the pages are reused
(benchmarks/receive_stall.py; the figures are in benchmarks/README.md). Three things give pages
back, and each is dealt with here:

* glibc's mmap threshold (128 KiB, rising to 32 MiB at most): above it a chunk is mmap'd and
  unmapped on free. `retain_freed_memory(limit)` puts allocations under `limit` on the heap
  (M_MMAP_THRESHOLD) and lets up to `limit` bytes freed at its top stay mapped (M_TRIM_THRESHOLD).
* glibc's per-thread arenas: a thread other than the main one allocates from an arena of its own,
  whose heaps are at most 64 MiB each (HEAP_MAX_SIZE), so a bigger chunk is mmap'd and unmapped on
  free whatever the threshold, and a heap of such an arena that empties is unmapped. Counted in the
  gateway over 100 MB Predicts: 24,400 fresh pages on a conversion thread and 2,000-15,000 on gRPC's
  event_engine threads per Predict. `one_arena()` (M_ARENA_MAX=1) sends every thread to the main
  arena, which has no such cap. glibc fixes the arena count when a second thread first allocates,
  so it must run before any thread starts (importing numpy starts OpenBLAS's); `tessera serve` and
  `tessera gateway` call it first thing (`cluster.cli`). Threads then share one arena's lock:
  small chunks come from each thread's cache (tcache) without it.
* protobuf's upb module calls `malloc_trim(0)` on every 10,000th free of a message arena's block
  (`upb_trim_allocfunc` in its python/protobuf.c, in protobuf 7.36.2 as installed here). That
  trim gives back every free page of the heap, whatever the thresholds, so a stream of small
  requests (each parses and builds a few messages) empties the kept heap every few thousand
  requests and the next big message faults its pages in again: in the gateway 2 to 4 of 7 100 MB
  Predicts after the first, 17,000-50,000 pages each on the loop's thread. `retain_freed_memory` sets upb's
  counter (a static int, found by its symbol in the module's ELF symbol table) 2^31 frees away
  from its trim (each small request frees a few blocks); when the module or the symbol is not as
  expected it is left alone (logged).

Processes started later get the same settings from the environment (`environment(limit)`: glibc
reads MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ before their first thread;
`follow_environment()` then holds upb's trim): `tessera serve` sets it for the embedded Ray, whose
replica hosts receive a 100 MB request and answer 100 MB (numpy asks for huge pages, so their fresh
pages showed as ~1,310 faults per Predict, now 1-3).

The first big message after start still finds no pages to reuse: ~122,000 fresh pages over the
gateway's threads for a 95 MiB Predict, 73,000 of them on the loop's. `prefault(nbytes, limit)`,
asked for by `--gateway_prefaulted_heap_bytes` (default 0), faults heap in at start and frees it,
so that message finds it ready (30 faults on the loop instead). It must run after `ray.init`:
ray.init forks its daemons, and a fork write-protects every page the process has, so that the
next write to each faults once more (counted: 25,600 faults for 100 MB written after a fork, into
pages faulted in before it). What it costs is the point: those bytes are resident from the start,
in a process that may never see a big message.

What it costs: after a big message the process keeps the heap it grew for it, up to `limit`
(beyond that glibc trims it back), instead of returning it at once. Memory freed below a chunk that
is still in use stays mapped too, as it always does on the heap (upb's periodic trim used to give
such holes back). A C library other than glibc (no `mallopt`) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import Final

log = logging.getLogger("tessera")

# glibc's <malloc.h>
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8
MAX_LIMIT: Final = 2**31 - 1  # mallopt takes an int

# upb's counter of arena-block frees, and the count at which it calls malloc_trim(0).
UPB_MODULE: Final = "google._upb._message"
UPB_COUNTER: Final = b"upb_trim_allocfunc.count"
UPB_TRIM_EVERY: Final = 10_000
UPB_EXPORTED: Final = b"PyInit__message"  # a symbol the module exports: where it was loaded
_FAR: Final = -(2**31)  # the counter counts up from here: 2^31 + 10,000 frees to the trim


def _mallopt() -> Callable[[int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this process's C library (%s): big messages use fresh pages", name)
        return None
    mallopt.restype, mallopt.argtypes = ctypes.c_int, (ctypes.c_int, ctypes.c_int)
    return mallopt


def one_arena() -> bool:
    """Every thread of this process allocates from glibc's main arena (see the module's doc); call
    it before any other thread starts. True when glibc took the setting."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))


def retain_freed_memory(limit: int) -> bool:
    """Lets this process keep up to `limit` bytes of freed heap for reuse, and keeps protobuf from
    trimming it (see the module's doc); 0 leaves glibc's defaults. True when the thresholds took
    effect."""
    if limit <= 0:
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    value = min(limit, MAX_LIMIT)
    # Both or neither: a trim threshold alone does nothing for chunks that are mmap'd anyway.
    done = bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
    if not done:
        log.warning("mallopt refused a %d-byte threshold: big messages use fresh pages", value)
        return False
    hold_upb_trim()
    return True


def prefault(nbytes: int, limit: int) -> int:
    """Faults in `nbytes` of heap now and frees it, kept for the next big messages (after
    `retain_freed_memory(limit)`; at most `limit`, which glibc would trim back). Returns the bytes
    faulted in: 0 when nothing was asked, the heap is not kept, or malloc refused. The process holds
    them resident from now on; call it at start, before serving (a memset of `nbytes`)."""
    size = min(nbytes, limit, MAX_LIMIT)
    if size <= 0:
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.restype, libc.free.argtypes = None, (ctypes.c_void_p,)
    block = libc.malloc(size)
    if not block:
        log.warning("malloc refused %d bytes to fault in: the first big message faults its pages", size)
        return 0
    ctypes.memset(block, 0, size)  # every page written: faulted in
    libc.free(block)  # under the trim threshold: it stays mapped, at the heap's top
    return size


def environment(limit: int) -> dict[str, str]:
    """`one_arena()` and `retain_freed_memory(limit)` as glibc's environment variables, for the
    processes started from now on (glibc reads them before their first thread); empty for 0. Such
    a process calls `follow_environment()` to keep protobuf's trim off as well."""
    if limit <= 0:
        return {}
    value = str(min(limit, MAX_LIMIT))
    return {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": value, "MALLOC_TRIM_THRESHOLD_": value}


def follow_environment() -> bool:
    """In a process started with `environment(limit)`: keeps protobuf's periodic trim from giving
    the kept heap back (`hold_upb_trim`). True if it did; False (nothing done) in any other process."""
    try:
        kept = int(os.environ.get("MALLOC_TRIM_THRESHOLD_", "0"))
    except ValueError:
        return False
    return kept > 0 and hold_upb_trim()


def hold_upb_trim() -> bool:
    """Sets protobuf upb's free counter 2^31 frees away from its `malloc_trim(0)`; True if it did.
    Leaves it alone (False) when the module, its symbols or the counter's value are not as expected."""
    counter = upb_trim_counter()
    if counter is None:
        return False
    if counter.value >= UPB_TRIM_EVERY:  # it counts from 0 (or from _FAR, set here before) to the trim
        log.info("protobuf's trim counter reads %d, not a count: left alone", counter.value)
        return False
    counter.value = _FAR
    return True


def upb_trim_counter() -> ctypes.c_int | None:
    """upb's counter of freed arena blocks in this process (imports protobuf's upb module), or None
    when it is not there: another protobuf implementation, another C library, a stripped module."""
    try:
        module = __import__(UPB_MODULE, fromlist=["_"])
        path = module.__file__
        assert path is not None
        with open(path, "rb") as f:
            image = f.read()
        symbols = _elf_symbols(image, {UPB_COUNTER, UPB_EXPORTED})
        exported = ctypes.cast(getattr(ctypes.CDLL(path), UPB_EXPORTED.decode()), ctypes.c_void_p).value
    except (ImportError, AssertionError, OSError, AttributeError, ValueError, struct.error) as exc:
        log.info("protobuf's upb module not found as expected (%r): its periodic malloc_trim stays", exc)
        return None
    if UPB_COUNTER not in symbols or UPB_EXPORTED not in symbols or exported is None:
        log.info("protobuf's upb module has no %s symbol: its periodic malloc_trim, if any, stays",
                 UPB_COUNTER.decode())
        return None
    (counter_at, counter_size), (exported_at, _) = symbols[UPB_COUNTER], symbols[UPB_EXPORTED]
    if counter_size != ctypes.sizeof(ctypes.c_int):
        return None
    return ctypes.c_int.from_address(exported - exported_at + counter_at)


def _elf_symbols(image: bytes, names: set[bytes]) -> dict[bytes, tuple[int, int]]:
    """{name: (value, size)} of the wanted symbols in a little-endian ELF64 file's symbol tables
    (.symtab, where local statics are, and .dynsym)."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1 or sys.byteorder != "little":
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
    found: dict[bytes, tuple[int, int]] = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strings_at = sections[link][4]
        for at in range(offset, offset + size, entsize):
            name_at, _, _, _, value, length = struct.unpack_from("<IBBHQQ", image, at)
            end = image.index(b"\0", strings_at + name_at)
            name = image[strings_at + name_at : end]
            if name in names and value:
                found[name] = (value, length)
    return found
