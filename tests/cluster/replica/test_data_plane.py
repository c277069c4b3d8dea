"""The data plane without Ray: wire codec, replica-side server and gateway-side channel."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster import errors
from cluster.replica import wire
from cluster.replica.data_plane import DataPlaneServer
from cluster.routing.channel import ReplicaChannel


def _strings(*items: bytes) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def test_codec_round_trip_of_calls_and_results() -> None:
    requests = [
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([[1], [2]], np.int64)},
        {"s": _strings(b"a", b"\x00\xff", b""), "empty": np.zeros((0, 4), np.float64)},
    ]
    frame = b"".join(bytes(c) for c in wire.encode_call(7, 3, "sig", requests, ["y"], [0.5, None]))
    (length,) = wire.FRAME_LENGTH.unpack_from(frame)
    call_id, header, payload = wire.split_frame(memoryview(frame)[4 : 4 + length])
    version, signature, decoded, output_filter, timeouts = wire.decode_call(header, payload)
    assert (call_id, version, signature, output_filter, timeouts) == (7, 3, "sig", ("y",), [0.5, None])
    for want, got in zip(requests, decoded, strict=True):
        assert want.keys() == got.keys()
        for alias in want:
            assert got[alias].dtype == want[alias].dtype and got[alias].shape == want[alias].shape
            assert got[alias].tolist() == want[alias].tolist()

    results = [{"y": np.ones((1, 2), np.float32)}, errors.InvalidArgument("bad"), ValueError("bug")]
    frame = b"".join(bytes(c) for c in wire.encode_results(9, results))
    _, header, payload = wire.split_frame(memoryview(frame)[4:])
    decoded_results = wire.decode_results(header, payload)
    np.testing.assert_array_equal(decoded_results[0]["y"], results[0]["y"])
    assert isinstance(decoded_results[1], errors.InvalidArgument) and str(decoded_results[1]) == "bad"
    assert isinstance(decoded_results[2], errors.Internal)


def test_channel_and_server_multiplex_concurrent_calls_and_survive_a_bad_call() -> None:
    async def run(version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        if signature == "boom":
            raise RuntimeError("whole call failed")
        await asyncio.sleep(0.01 * (len(requests) % 3))  # answers come back out of order
        return [{"y": r["x"] * version} for r in requests]

    async def main() -> None:
        server = DataPlaneServer(run)
        address = await server.start("127.0.0.1")
        channel = ReplicaChannel(address)
        calls = [
            channel.run(2, "s", [{"x": np.full((1, 2), i, np.float32)}] * (i % 4 + 1)) for i in range(20)
        ]
        results = await asyncio.gather(*calls)
        for i, result in enumerate(results):
            assert len(result) == i % 4 + 1
            np.testing.assert_array_equal(result[0]["y"], np.full((1, 2), 2 * i, np.float32))
        with pytest.raises(errors.Internal, match="whole call failed"):
            await channel.run(1, "boom", [{"x": np.zeros((1, 2), np.float32)}])
        (again,) = await channel.run(3, "s", [{"x": np.ones((1, 2), np.float32)}])
        np.testing.assert_array_equal(again["y"], [[3.0, 3.0]])
        await server.close()
        await channel.close()

    asyncio.run(main())


def test_a_lost_replica_fails_pending_calls_with_unavailable() -> None:
    async def main() -> None:
        async def dies_mid_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # a call arrived; the replica process dies before answering
            writer.close()

        server = await asyncio.start_server(dies_mid_call, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        channel = ReplicaChannel(address)
        with pytest.raises(errors.Unavailable, match="lost|closed"):
            await channel.run(1, "s", [{"x": np.zeros((1, 1), np.float32)}])
        server.close()
        await server.wait_closed()
        with pytest.raises(errors.Unavailable, match="unreachable"):
            await channel.run(1, "s", [{"x": np.zeros((1, 1), np.float32)}])
        await channel.close()

    asyncio.run(main())
