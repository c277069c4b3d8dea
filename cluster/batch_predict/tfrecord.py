"""TFRecord files (TensorFlow's record framing) of tf.Examples: reading records, decoding Examples.

A record is: uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked CRC-32C of
the data (all little-endian). Both checksums are verified: a record whose data checksum is wrong is
a bad row (the next record is still found by its length); a length that fails its checksum, or a
file cut short, ends the file with one bad row, since nothing after it can be framed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import google_crc32c
import numpy as np
import pyarrow as pa
from google.protobuf.message import DecodeError

from protos.tessera import example_pb2

_MASK_DELTA = 0xA282EAD8
# The one column of TFRecord input fed as is: each record's bytes (a serialized tf.Example).
RECORD_COLUMN = "__record__"


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One record in TFRecord framing (for writers and tests)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


@dataclass(frozen=True)
class Record:
    index: int  # position in the file, counting bad records
    data: bytes | None  # None: a bad record
    error: str = ""


def read_records(stream: object) -> Iterator[Record]:
    """Every record of an open binary stream (anything with `read(n)`), bad ones marked."""
    read = stream.read  # type: ignore[attr-defined]
    index = 0
    while True:
        header = read(12)
        if not header:
            return
        if len(header) < 12:
            yield Record(index, None, "file ends inside a record header")
            return
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if masked_crc(length_bytes) != length_crc:
            yield Record(index, None, "corrupt record length (checksum mismatch); the rest of the file is skipped")
            return
        (length,) = struct.unpack("<Q", length_bytes)
        body = read(length + 4)
        if len(body) < length + 4:
            yield Record(index, None, "file ends inside a record")
            return
        data = bytes(body[:length])
        if masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            yield Record(index, None, "corrupt record data (checksum mismatch)")
        else:
            yield Record(index, data)
        index += 1


_KINDS = {"float_list": pa.float32(), "int64_list": pa.int64(), "bytes_list": pa.binary()}


def decode_examples(records: list[bytes]) -> tuple[pa.RecordBatch, list[tuple[int, str]]]:
    """Columns from serialized Examples: one per feature, a scalar column where every row has one
    value, a list column otherwise; a feature absent from a row is null there.

    Returns the batch of the decodable records and (position in `records`, reason) for the rest.
    """
    rows: list[dict[str, list[object]]] = []
    kinds: dict[str, str] = {}
    bad: list[tuple[int, str]] = []
    for i, blob in enumerate(records):
        try:
            fmap = example_pb2.Example.FromString(blob).features.feature
        except DecodeError:
            bad.append((i, "not a serialized tf.Example"))
            continue
        row = {}
        for name, feature in fmap.items():
            kind = feature.WhichOneof("kind")
            if kind is None:
                continue
            if kinds.setdefault(name, kind) != kind:
                bad.append((i, f"feature {name!r} is a {kind} here, a {kinds[name]} before"))
                break
            row[name] = list(getattr(feature, kind).value)
        else:
            rows.append(row)
    columns = {}
    for name, kind in sorted(kinds.items()):
        values = [row.get(name) for row in rows]
        if all(v is None or len(v) == 1 for v in values):
            columns[name] = pa.array([None if v is None else v[0] for v in values], _KINDS[kind])
        else:
            columns[name] = pa.array(values, pa.list_(_KINDS[kind]))
    batch = pa.RecordBatch.from_pydict(columns) if columns else pa.RecordBatch.from_pydict(
        {"_": pa.nulls(len(rows))}).drop_columns(["_"])
    return batch, bad


def records_batch(records: list[bytes]) -> pa.RecordBatch:
    """The records as one binary column, fed as they are to an Example-taking signature."""
    array = np.empty(len(records), dtype=object)
    array[:] = records
    return pa.RecordBatch.from_pydict({RECORD_COLUMN: pa.array(array, pa.binary())})
