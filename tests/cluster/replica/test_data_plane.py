"""The data plane without Ray: wire codec, replica-side server and gateway-side channel."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster import errors
from cluster.replica import wire
from cluster.replica.data_plane import DataPlaneServer
from cluster.routing.channel import ModelChannel, ReplicaChannel

SECRET = b"s" * 32


def _strings(*items: bytes) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def test_codec_round_trip_of_calls_and_results() -> None:
    requests = [
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([[1], [2]], np.int64)},
        {"s": _strings(b"a", b"\x00\xff", b""), "empty": np.zeros((0, 4), np.float64)},
    ]
    frame = b"".join(bytes(c) for c in wire.encode_call(7, "iris", 3, "sig", requests, ["y"], [0.5, None]))
    (length,) = wire.FRAME_LENGTH.unpack_from(frame)
    call_id, header, payload = wire.split_frame(memoryview(frame)[4 : 4 + length])
    model, version, signature, decoded, output_filter, timeouts = wire.decode_call(header, payload)
    assert (call_id, model, version, signature, output_filter, timeouts) == (7, "iris", 3, "sig", ("y",), [0.5, None])
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
    async def run(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        if signature == "boom":
            raise RuntimeError("whole call failed")
        await asyncio.sleep(0.01 * (len(requests) % 3))  # answers come back out of order
        return [{"y": r["x"] * version} for r in requests]

    async def main() -> None:
        server = DataPlaneServer(run, SECRET)
        address = await server.start("127.0.0.1")
        channel = ReplicaChannel(address, SECRET)
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


def test_one_connection_carries_the_calls_of_every_model_on_a_host() -> None:
    async def run(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        scale = {"a": 10.0, "b": 100.0}.get(model)
        if scale is None:
            raise errors.Unavailable(f"model {model} is not on this host")
        return [{"y": r["x"] * scale} for r in requests]

    async def main() -> None:
        server = DataPlaneServer(run, SECRET)
        address = await server.start("127.0.0.1")
        host = ReplicaChannel(address, SECRET)
        a, b = ModelChannel(host, "a"), ModelChannel(host, "b")
        x = [{"x": np.ones((1, 2), np.float32)}]
        (ra,), (rb,) = await asyncio.gather(a.run(1, "s", x), b.run(1, "s", x))
        np.testing.assert_array_equal(ra["y"], [[10.0, 10.0]])
        np.testing.assert_array_equal(rb["y"], [[100.0, 100.0]])
        with pytest.raises(errors.Unavailable, match="model c is not on this host"):
            await ModelChannel(host, "c").run(1, "s", x)
        assert host._writer is not None and server.refused == 0  # noqa: SLF001 - one connection, still open
        await host.close()
        await server.close()

    asyncio.run(main())


def test_a_lost_replica_fails_pending_calls_with_unavailable() -> None:
    async def main() -> None:
        async def dies_mid_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _accept(reader, writer)
            await reader.read(1)  # a call arrived; the replica process dies before answering
            writer.close()

        server = await asyncio.start_server(dies_mid_call, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        channel = ReplicaChannel(address, SECRET)
        with pytest.raises(errors.Unavailable, match="lost|closed"):
            await channel.run(1, "s", [{"x": np.zeros((1, 1), np.float32)}])
        server.close()
        await server.wait_closed()
        with pytest.raises(errors.Unavailable, match="unreachable"):
            await channel.run(1, "s", [{"x": np.zeros((1, 1), np.float32)}])
        await channel.close()

    asyncio.run(main())


async def _accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The replica's side of the handshake, for fake replicas."""
    nonce = b"n" * wire.NONCE_BYTES
    writer.write(wire.MAGIC + nonce)
    assert wire.check_proof(SECRET, nonce, await reader.readexactly(wire.PROOF_BYTES))
    writer.write(wire.ACCEPTED)


async def _echo(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
    return [{"y": r["x"]} for r in requests]


ONE = [{"x": np.ones((1, 2), np.float32)}]


def test_a_stranger_without_the_cluster_secret_never_reaches_a_run() -> None:
    ran: list[int] = []

    async def run(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        ran.append(version)
        return [{} for _ in requests]

    async def main() -> None:
        server = DataPlaneServer(run, SECRET, handshake_timeout_s=0.5)
        address = await server.start("127.0.0.1")
        # A process on the node network sends a well-formed call frame without answering the challenge.
        reader, writer = await asyncio.open_connection(*address)
        assert (await reader.readexactly(wire.CHALLENGE_BYTES)).startswith(wire.MAGIC)
        for chunk in wire.encode_call(1, "m", 1, "s", ONE, [], None):
            writer.write(bytes(chunk))
        assert await reader.read() == b""  # closed, nothing answered
        writer.close()
        # One that says nothing is dropped after the handshake timeout.
        reader, writer = await asyncio.open_connection(*address)
        said = await asyncio.wait_for(reader.read(), 2.0)  # the challenge, then the connection closes
        assert said.startswith(wire.MAGIC) and len(said) == wire.CHALLENGE_BYTES
        writer.close()
        # A gateway of another cluster (another secret) is refused, with a clear error.
        with pytest.raises(errors.Unavailable, match="refused"):
            await ReplicaChannel(address, b"x" * 32).run(1, "s", ONE)
        assert ran == [] and server.refused == 3
        (ok,) = await ReplicaChannel(address, SECRET).run(1, "s", ONE)  # while our own gateway gets in
        assert ran == [1] and ok == {}
        await server.close()

    asyncio.run(main())


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    async def main() -> None:
        server = DataPlaneServer(_echo, SECRET, max_frame=1024)
        address = await server.start("127.0.0.1")
        reader, writer = await asyncio.open_connection(*address)
        challenge = await reader.readexactly(wire.CHALLENGE_BYTES)
        writer.write(wire.proof(SECRET, challenge[len(wire.MAGIC):]))
        assert await reader.readexactly(1) == wire.ACCEPTED
        writer.write(wire.FRAME_LENGTH.pack(2**31 - 1))  # claims 2 GiB; the body never comes
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed at once, not waiting for it
        assert server.refused == 1
        # The gateway's side knows the limit too: an oversized call never leaves it.
        channel = ReplicaChannel(address, SECRET, max_frame=1024)
        with pytest.raises(errors.ResourceExhausted, match="limit of 1024"):
            await channel.run(1, "s", [{"x": np.zeros(1024, np.float32)}])
        (small,) = await channel.run(1, "s", ONE)
        np.testing.assert_array_equal(small["y"], ONE[0]["x"])
        await channel.close()
        await server.close()

    asyncio.run(main())


def test_a_hung_replica_fails_its_calls_within_the_liveness_timeout_and_a_busy_one_does_not() -> None:
    async def main() -> None:
        async def stopped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _accept(reader, writer)
            await asyncio.sleep(30)  # SIGSTOP: the socket stays open, nothing is answered

        hung = await asyncio.start_server(stopped, "127.0.0.1", 0)
        channel = ReplicaChannel(hung.sockets[0].getsockname()[:2], SECRET, ping_interval_s=0.05,
                                 liveness_timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(errors.Unavailable, match="sent nothing"):
            await channel.run(1, "s", ONE)  # no client deadline, yet it does not wait for long
        assert asyncio.get_running_loop().time() - started < 1.5
        await channel.close()

        # The silence is checked when it reaches the timeout, not at the next ping: with pings
        # 30 s apart the call still fails at the 0.3 s timeout.
        sparse = ReplicaChannel(hung.sockets[0].getsockname()[:2], SECRET, ping_interval_s=30.0,
                                liveness_timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(errors.Unavailable, match="sent nothing"):
            await asyncio.wait_for(sparse.run(1, "s", ONE), 10.0)
        assert asyncio.get_running_loop().time() - started < 5.0
        await sparse.close()
        hung.close()

        async def slow(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
            await asyncio.sleep(1.0)  # a long batch: the replica still answers pings meanwhile
            return await _echo(model, version, signature, requests, output_filter, timeouts)

        server = DataPlaneServer(slow, SECRET)
        busy = ReplicaChannel(await server.start("127.0.0.1"), SECRET, ping_interval_s=0.05, liveness_timeout_s=0.3)
        (result,) = await busy.run(1, "s", ONE)
        np.testing.assert_array_equal(result["y"], ONE[0]["x"])
        await busy.close()
        await server.close()

    asyncio.run(main())


def test_a_draining_replica_refuses_new_calls_and_a_leaving_channel_waits_for_its_answers() -> None:
    async def slow(model, version, signature, requests, output_filter, timeouts):  # noqa: ANN001, ANN202
        await asyncio.sleep(0.3)
        return await _echo(model, version, signature, requests, output_filter, timeouts)

    async def main() -> None:
        server = DataPlaneServer(slow, SECRET)
        channel = ReplicaChannel(await server.start("127.0.0.1"), SECRET)
        running = asyncio.ensure_future(channel.run(1, "s", ONE))
        await asyncio.sleep(0.05)
        server.draining = True
        with pytest.raises(errors.Unavailable, match="draining"):
            await channel.run(1, "s", ONE)  # the gateway re-sends it to another replica
        await channel.close(grace_s=5.0)  # left the routing table: answers what it has, then closes
        (result,) = await running
        np.testing.assert_array_equal(result["y"], ONE[0]["x"])
        assert server.busy() == 0
        with pytest.raises(errors.Unavailable, match="left the routing table"):
            await channel.run(1, "s", ONE)
        await server.close()

    asyncio.run(main())


def test_an_object_tensor_is_encoded_in_pieces_of_about_a_mebibyte_and_decodes_whole() -> None:
    # One join of a big object tensor holds the GIL for a copy of all of it; pieces let the loop in.
    items = [b"%07d" % i * 12 for i in range(40_000)] + [b"y" * (3 << 20), b""]  # ~3.4 MB, then one 3 MiB item
    strings = _strings(*items)
    chunks: list[bytes | memoryview] = []
    specs = wire._encode_tensors({"s": strings}, chunks)  # noqa: SLF001
    assert len(chunks) >= 4
    assert all(len(c) <= (1 << 20) + 100 for c in chunks if c is not items[-2])
    assert any(c is items[-2] for c in chunks)  # the big item itself, not a copy of it
    payload = memoryview(b"".join(bytes(c) for c in chunks))
    assert specs[0][3] == len(payload)
    decoded, end = wire._decode_tensors(specs, payload, 0)  # noqa: SLF001
    assert end == len(payload) and decoded["s"].tolist() == items
