"""Big data-plane frames (100 MB) move in chunks: the event loop keeps ticking meanwhile, small
calls on the same connection are answered, and the big frame arrives intact."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster.replica import stream, wire
from cluster.replica.data_plane import DataPlaneServer
from cluster.routing.channel import ModelChannel, ReplicaChannel
from tests.loop_testlib import collector_paused, gaps_at_rest, one_copy_seconds, ticker

SECRET = b"s" * 32


async def _echo(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
    return [{"y": r["x"]} for r in requests]


def test_a_100_mb_call_and_answer_never_hold_the_loop_and_arrive_intact() -> None:
    big = np.arange(25_000_000, dtype=np.float32).reshape(-1, 2)  # 100 MB each way
    strings = np.empty(200_000, dtype=object)  # an object tensor, encoded off the loop
    strings[:] = [b"%d" % i for i in range(strings.size)]
    copy = one_copy_seconds(big.tobytes())

    async def main() -> None:
        server = DataPlaneServer(_echo, SECRET)  # gateway and replica share this loop
        channel = ReplicaChannel(await server.start("127.0.0.1"), SECRET)
        await channel.run(1, "s", [{"x": np.ones((1, 2), np.float32)}])  # connected
        baseline = await gaps_at_rest()
        gaps: list[float] = []
        stop = asyncio.Event()
        ticking = asyncio.get_running_loop().create_task(ticker(gaps, stop))
        big_call = asyncio.ensure_future(channel.run(1, "s", [{"x": big}, {"x": strings}]))
        small_answers = 0
        while not big_call.done():  # small calls keep being answered while the big one moves
            (small,) = await channel.run(1, "s", [{"x": np.full((1, 2), 3, np.float32)}])
            np.testing.assert_array_equal(small["y"], [[3.0, 3.0]])
            small_answers += 1
        got, got_strings = await big_call
        stop.set()
        await ticking
        await channel.close()
        await server.close()

        np.testing.assert_array_equal(got["y"], big)
        assert got_strings["y"].tolist() == strings.tolist()
        assert small_answers > 1
        # Encoding and decoding the 100 MB on the loop would hold it for a copy at least each way;
        # in chunks, with the copies in a worker thread, what is left is the machine's noise and the
        # GIL handed back and forth with that thread (up to about a copy on a crowded machine).
        bound = max(baseline) + 2 * copy
        assert max(gaps) < bound, (
            f"the loop was held for {max(gaps) * 1000:.0f} ms; one copy of the 100 MB takes "
            f"{copy * 1000:.0f} ms, the loop's worst gap at rest {max(baseline) * 1000:.0f} ms"
        )

    with collector_paused():
        asyncio.run(main())


def test_small_frames_take_the_one_write_fast_path_and_big_ones_go_in_parts() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, bytes]] = []

        def writelines(self, frame: list[bytes]) -> None:
            self.calls.append(("writelines", b"".join(bytes(p) for p in frame)))

        def write(self, data: bytes) -> None:
            self.calls.append(("write", bytes(data)))

        async def drain(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def main() -> None:
        recorder = Recorder()
        frames = stream.FrameWriter(recorder)  # type: ignore[arg-type]
        small = wire.control_frame(1, wire.PING)
        await frames.send(small)
        assert recorder.calls == [("writelines", b"".join(small))]
        recorder.calls.clear()
        body = b"z" * (3 * stream.CHUNK + 5)
        await frames.send([wire.FRAME.pack(12 + len(body), 7, 0), body])
        assert {kind for kind, _ in recorder.calls} == {"write"}
        heads = [data for _, data in recorder.calls if len(data) == wire.PART_HEAD.size]
        sizes = [wire.PART_HEAD.unpack(h)[0] ^ wire.PART for h in heads]
        assert sizes == [stream.CHUNK] * 3 + [17]  # the body less the length field, cut in parts
        assert {wire.PART_HEAD.unpack(h)[1] for h in heads} == {12 + len(body)}
        assert b"".join(d for _, d in recorder.calls if d not in heads) == wire.FRAME.pack(12 + len(body), 7, 0)[4:] + body

    asyncio.run(main())


def test_a_small_frame_passes_a_big_one_that_is_on_its_way() -> None:
    # The reader does not read until both frames are sent: the big frame's parts fill the socket
    # and the transport's buffer, and the small frame, sent after the big one began, still comes
    # out of the reader first, each whole.
    async def main() -> None:
        got: list[memoryview] = []
        ready = asyncio.Event()

        async def serve(reader: stream.FrameStream, writer: asyncio.StreamWriter) -> None:
            await ready.wait()
            await reader.frames(got.append, wire.DEFAULT_MAX_FRAME)
            writer.close()

        server = await stream.start_server(serve, "127.0.0.1")
        _, writer = await stream.open_connection(*server.sockets[0].getsockname()[:2])
        frames = stream.FrameWriter(writer)
        big = wire.encode_results(1, [{"y": np.arange(8_000_000, dtype=np.float32)}])  # 32 MB
        small = wire.encode_results(2, [{"y": np.ones(3, np.float32)}])
        sending_big = asyncio.ensure_future(frames.send(big))
        while not writer.transport.get_write_buffer_size() and not sending_big.done():
            await asyncio.sleep(0)  # until the big frame is stuck: the transport holds a part
        sending_small = asyncio.ensure_future(frames.send(small))
        await asyncio.sleep(0)
        ready.set()
        await asyncio.gather(sending_big, sending_small)
        while len(got) < 2:
            await asyncio.sleep(0.01)
        first, second = (wire.split_frame(body) for body in got)
        assert (first[0], second[0]) == (2, 1)  # the small frame first
        np.testing.assert_array_equal(wire.decode_results(second[1], second[2])[0]["y"], np.arange(8_000_000))
        writer.close()
        server.close()

    asyncio.run(main())


def test_a_big_call_to_one_model_never_holds_back_another_models_calls_on_the_same_host() -> None:
    # One replica host, two models, one connection from the gateway (as in production). While the
    # 64 MB request of `target` travels to the host, and while its 64 MB answer travels back, the
    # small calls of `bench` on the same connection keep being run and answered: counted in each
    # window. A connection that lets a big frame through alone answers none in either (at most
    # the one or two that slip through a thread hop around it).
    big = np.ones((8_000_000, 2), dtype=np.float32)  # 64 MB each way
    events: list[str] = []
    big_ran = asyncio.Event()

    async def run(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        events.append(f"{model} ran")
        if model == "target":
            big_ran.set()
        return [{"y": r["x"]} for r in requests]

    async def main() -> None:
        server = DataPlaneServer(run, SECRET)
        host = ReplicaChannel(await server.start("127.0.0.1"), SECRET)
        bench, target = ModelChannel(host, "bench"), ModelChannel(host, "target")
        await bench.run(1, "s", [{"x": np.ones((1, 2), np.float32)}])  # connected
        events.clear()
        big_call = asyncio.ensure_future(target.run(1, "s", [{"x": big}]))
        while not big_call.done():
            (small,) = await bench.run(1, "s", [{"x": np.full((1, 2), 3, np.float32)}])
            np.testing.assert_array_equal(small["y"], [[3.0, 3.0]])
            events.append("bench answered" if big_ran.is_set() else "bench answered before target ran")
        (got,) = await big_call
        await host.close()
        await server.close()
        np.testing.assert_array_equal(got["y"], big)
        before = events[: events.index("target ran")]
        after = events[events.index("target ran") :]
        # While the request moved: bench calls run on the host before target's call could run.
        assert before.count("bench ran") >= 10, f"{before.count('bench ran')} bench calls ran while the 64 MB came in"
        # While the answer moved: bench calls answered after target ran, before its answer arrived.
        assert after.count("bench answered") >= 10, (
            f"{after.count('bench answered')} bench calls answered while the 64 MB went out")

    with collector_paused():
        asyncio.run(main())


def test_the_parser_puts_frames_together_from_reads_cut_anywhere() -> None:
    # What a connection may bring: small frames, a big frame's parts with small frames between,
    # a small frame over several reads; cut in reads of 1 byte up to whole frames, every frame
    # comes out whole and in order.
    smalls = [b"".join(bytes(c) for c in wire.encode_results(i, [{"y": np.full(i, i, np.float32)}])) for i in range(5)]
    body = bytes(range(256)) * 40  # 10 KiB, sent in parts of 4 KiB
    parts = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    head = [wire.PART_HEAD.pack(wire.PART | len(p), len(body)) + p for p in parts]
    data = smalls[0] + head[0] + smalls[1] + head[1] + smalls[2] + smalls[3] + head[2] + smalls[4]
    want = [smalls[0][4:], smalls[1][4:], smalls[2][4:], smalls[3][4:], body, smalls[4][4:]]
    for cut in (1, 3, 7, 100, 4099, len(data)):
        got: list[memoryview] = []
        parser = stream.FrameParser(wire.DEFAULT_MAX_FRAME, got.append)
        for i in range(0, len(data), cut):
            parser.feed(data[i : i + cut])
        assert [bytes(b) for b in got] == want, cut


def test_the_parser_refuses_frames_over_the_limit_and_parts_that_do_not_add_up() -> None:
    got: list[memoryview] = []
    with pytest.raises(stream.FrameTooBig):
        stream.FrameParser(100, got.append).feed(wire.FRAME_LENGTH.pack(101))
    with pytest.raises(stream.FrameTooBig):
        stream.FrameParser(100, got.append).feed(wire.PART_HEAD.pack(wire.PART | 10, 101))
    with pytest.raises(ValueError, match="say more than its length"):
        stream.FrameParser(100, got.append).feed(wire.PART_HEAD.pack(wire.PART | 11, 10))
    with pytest.raises(ValueError, match="another big frame"):
        stream.FrameParser(100, got.append).feed(
            wire.PART_HEAD.pack(wire.PART | 2, 10) + b"ab" + wire.PART_HEAD.pack(wire.PART | 2, 20))
    assert got == []
