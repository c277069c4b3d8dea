"""The hand-written wire format agrees with protobuf's own encoder and decoder."""

from __future__ import annotations

import pytest

from exporter import protobuf_wire as pw
from protos.tessera import example_pb2


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1])
def test_varints_round_trip_like_protobuf(value: int) -> None:
    encoded = pw.encode_varint(value)
    assert pw.decode_varint(encoded, 0) == (value, len(encoded))
    message = example_pb2.Int64List()
    message.value.append(value - 2**64 if value >= 2**63 else value)
    assert message.SerializeToString() == pw.tag(1) + pw.encode_varint(len(encoded)) + encoded


def test_fields_are_what_protobuf_writes_and_reads() -> None:
    ex = example_pb2.Example()
    ex.features.feature["x"].bytes_list.value.append(b"abc")
    features = ex.features.SerializeToString()
    assert pw.field(1, features) == ex.SerializeToString()
    assert pw.field_size(1, len(features)) == len(ex.SerializeToString())
    assert pw.length_delimited_fields(ex.SerializeToString()) == [(1, features)]


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\xff", b"\x0b"])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        pw.length_delimited_fields(data)
