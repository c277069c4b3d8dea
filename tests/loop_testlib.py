"""Measuring how long something holds an asyncio event loop, on a machine whose speed varies.

Tests never assert a time: they compare the loop's worst gap with yardsticks measured in the same
run (`one_copy_seconds` of the data, the loop's worst gap at rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    """Appends the time between the loop's turns (asked every 1 ms) to `gaps` until `stop`."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def gaps_at_rest(seconds: float = 0.2) -> list[float]:
    """The loop's gaps while it does nothing else: the machine's own noise, right now."""
    gaps: list[float] = []
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(ticker(gaps, stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return gaps


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No full garbage collection of the test process's objects (0.2-0.3 s on this machine) in the
    measured window: that pause is not the code under test's (`tessera serve` freezes its startup
    objects out of the collector's sight, `cluster.commands._freeze_startup_objects`)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def one_copy_seconds(data: bytes) -> float:
    """How long one copy of `data` takes here, now, holding the GIL (what one protobuf parse or one
    `tobytes()` of it costs the loop): the yardstick, since a shared machine's speed varies."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        copy = data[1:]
        best = min(best, time.perf_counter() - started)
        del copy
    return best
