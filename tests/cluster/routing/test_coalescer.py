"""How many calls a coalescer lane keeps running: one at a time for short calls (a mean under
`long_call_s`; each then carries what arrived during the one before), spread over replicas for long
ones, and never a wait of more than `spread_s` for a running short call. No Ray: replicas are
in-process targets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from cluster.routing.coalescer import Coalescer
from cluster.routing.router import Router
from cluster.routing.table import ReplicaRef


class Target:
    """A replica's data-plane end whose calls take `call_s`, or until `release` is set when `hold`."""

    def __init__(self, name: str, call_s: float, lane: list[int] | None = None) -> None:
        self.name, self.call_s = name, call_s
        self.calls: list[int] = []  # requests per call, in the order the calls started
        self.lane = lane if lane is not None else [0]  # calls running on all the targets
        self.starts: list[int] = []  # at each call's start, how many ran on all the targets
        self.hold = False
        self.holding = 0  # calls waiting for `release`
        self.release = asyncio.Event()

    async def run(
        self, version: int, sig: str, requests: list[Any], output_filter: tuple[str, ...], timeouts: Any
    ) -> list[Any]:
        self.calls.append(len(requests))
        self.lane[0] += 1
        self.starts.append(self.lane[0])
        try:
            if self.hold:
                self.holding += 1
                await self.release.wait()
            else:
                await asyncio.sleep(self.call_s)
        finally:
            self.lane[0] -= 1
        return [{"y": r["x"] * 2} for r in requests]


def _router(*targets: Target) -> Router[Any]:
    return Router([ReplicaRef(t, (t.name, 0)) for t in targets])


def _submit(c: Coalescer, router: Router[Any], value: float = 1.0) -> asyncio.Future[Any]:
    return c.submit("m", router, lambda ref: ref.handle, 1, "s", {"x": np.full((1,), value, np.float32)})


async def _steady(c: Coalescer, router: Router[Any], callers: int, rounds: int) -> list[float]:
    """`callers` clients, each sending its next request as soon as its last one is answered."""

    async def caller(i: int) -> list[float]:
        out = []
        for _ in range(rounds):
            out.append(float((await _submit(c, router, float(i)))["y"][0]))
        return out

    results = await asyncio.gather(*(caller(i) for i in range(callers)))
    return [v for r in results for v in r]


def test_a_lane_of_short_calls_runs_one_at_a_time() -> None:
    lane = [0]
    a, b = Target("a", 0.01, lane), Target("b", 0.01, lane)

    async def main() -> None:
        c = Coalescer(spread_s=1.0, long_call_s=1.0)  # 10 ms calls are short here
        answers = await _steady(c, _router(a, b), callers=16, rounds=10)
        assert sorted(answers) == sorted(2.0 * i for i in range(16) for _ in range(10))

    asyncio.run(main())
    # A new lane's first burst spreads (no call has come back yet): two calls. After that, never
    # two at once, though each replica could take one; power of two choices still picks both.
    assert a.starts[:1] + b.starts[:1] == [1, 2] or b.starts[:1] + a.starts[:1] == [1, 2]
    assert max(a.starts[1:] + b.starts[1:]) == 1
    assert len(a.calls) > 1 and len(b.calls) > 1


def test_a_lane_of_long_calls_spreads_over_the_replicas() -> None:
    a, b = Target("a", 0.02), Target("b", 0.02)

    async def main() -> None:
        c = Coalescer(long_call_s=0.005)  # 20 ms calls are long here
        router = _router(a, b)
        await _steady(c, router, callers=16, rounds=5)

    asyncio.run(main())
    assert a.calls and b.calls
    assert len(a.calls) + len(b.calls) >= 9  # two calls at a time: ~8 requests each


def test_a_request_waits_for_a_running_short_call_at_most_spread_s() -> None:
    a, b = Target("a", 0.001), Target("b", 0.001)

    async def main() -> None:
        c = Coalescer(spread_s=0.05)
        router = _router(a, b)
        stop = False

        async def caller() -> None:
            while not stop:
                await _submit(c, router)

        callers = [asyncio.create_task(caller()) for _ in range(4)]
        await asyncio.sleep(0.1)  # ~1 ms calls, back to back: the lane's calls are short
        # The next call goes to a replica that does not answer (a stopped process, say) ...
        a.hold = b.hold = True
        while not (a.holding or b.holding):
            await asyncio.sleep(0)
        held, other = (a, b) if a.holding else (b, a)
        other.hold = False
        # ... so a request that arrives now waits for it spread_s, then goes to the other replica.
        started = time.monotonic()
        answer = await asyncio.wait_for(_submit(c, router, 3.0), 5.0)
        waited = time.monotonic() - started
        assert float(answer["y"][0]) == 6.0
        assert 0.04 <= waited < 1.0, waited
        assert held.holding == 1
        stop = True
        held.release.set()
        await asyncio.wait_for(asyncio.gather(*callers), 5.0)

    asyncio.run(main())
