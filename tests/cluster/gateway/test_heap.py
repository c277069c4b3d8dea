"""A gateway process keeps the pages of a big message for the next one: grpc.aio's copies of a
100 MB message on the event loop's thread then fault in next to nothing (each fresh page is a
fault and a 4 KiB memset while the GIL is held). Counted in page faults (events), not in time.

Each case runs in its own interpreter: mallopt changes a whole process's allocator for good."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
MESSAGE = 100 * 2**20
PAGES = MESSAGE // 4096

# A grpc.aio server taking raw bytes, as the gateway's handlers do, and a client in a thread of the
# same process; the loop's own thread counts its page faults (RUSAGE_THREAD) over each call.
_GRPC = r"""
import asyncio, json, resource, sys
import grpc
from cluster.gateway import heap

tuned = heap.retain_freed_memory(int(sys.argv[1]))
BIG = 2**31 - 1
OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]

def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt

async def main():
    async def echo(request, context):
        return request  # the answer is copied into grpc's slice on the loop, as Predict's is
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    body = b"7" * int(sys.argv[2])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    call = channel.unary_unary("/t/Echo")
    counted = []
    for _ in range(6):
        before = faults()
        answer = await asyncio.to_thread(call, body, timeout=120)
        counted.append(faults() - before)
        assert answer == body
        del answer
    channel.close()
    await server.stop(None)
    print(json.dumps({"tuned": tuned, "faults": counted}))

asyncio.run(main())
"""


def _run(script: str, *args: object) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("retained", [0, 1 << 30], ids=["glibc_defaults", "retained"])
def test_grpc_aio_copies_of_a_100_mb_message_reuse_the_pages_of_the_last(retained: int) -> None:
    got = _run(_GRPC, retained, MESSAGE)
    faults = got["faults"]
    assert isinstance(faults, list)
    if not retained:
        # The control: without the setting each call's copies fault in (at least) a message's pages
        # on the loop's thread, so the other case can fail.
        assert got["tuned"] is False
        assert min(faults) > PAGES, faults
        return
    assert got["tuned"] is True
    # The first call grows the heap; most later ones reuse it, faulting in a few pages (grpc's small
    # allocations) against 77,000 (three copies' worth) by default. Now and then one still takes
    # fresh pages for one of its buffers (3 calls in 36 here: the heap's free chunks do not always
    # fit the next message's as they come), so the median of the later calls is what is bounded.
    later = sorted(faults[1:])
    assert later[len(later) // 2] < PAGES // 20, faults


def test_zero_leaves_the_allocator_alone() -> None:
    from cluster.gateway import heap

    assert heap.retain_freed_memory(0) is False
    assert heap.retain_freed_memory(-1) is False
