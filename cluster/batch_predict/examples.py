"""Serialized tf.Examples from table columns, built for the whole batch at once in numpy.

The wire format of an Example with features f1..fn is, per row,

    Example   = 0x0A len(Features) Features
    Features  = for each feature present in the row: 0x0A len(Entry) Entry
    Entry     = 0x0A len(key) key  0x12 len(Feature) Feature
    Feature   = tag len(List) List      (tag: 0x0A bytes_list, 0x12 float_list, 0x1A int64_list)
    List      = 0x0A len(Packed) Packed (floats as little-endian float32, ints as varints), or for
                bytes: 0x0A len(value) value, once per value

Every piece is either the same bytes on every row or one byte string per row, and every length is
a sum of the lengths of the pieces inside it, so a row is a flat sequence of ragged pieces;
`_concat_rows` lays every row's pieces end to end, with one fancy index per piece. A null (or a NaN float scalar) leaves the feature out of its row, as TF's own writers do.
Columns of other types (nested lists, ragged lists of strings...) are not handled here:
`serialize` returns None and the caller uses the row-by-row path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_Piece = tuple[np.ndarray, np.ndarray]  # (per-row lengths int64 [n], the rows' bytes end to end uint8)


def varints(values: np.ndarray) -> _Piece:
    """Base-128 varints of uint64 `values` (negative int64 as their two's complement, as protobuf
    does): (bytes per value, the encodings end to end)."""
    v = values.astype(np.uint64, copy=False)
    if not len(v) or int(v.max()) < 0x80:  # the usual case for lengths: one byte each
        return np.ones(len(v), np.int64), v.astype(np.uint8)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    count = 1 + (v[:, None] >= (np.uint64(1) << shifts[None, 1:])).sum(axis=1).astype(np.int64)
    width = int(count.max())
    groups = ((v[:, None] >> shifts[None, :width]) & np.uint64(0x7F)).astype(np.uint8)
    position = np.arange(width)[None, :]
    groups[position < (count[:, None] - 1)] |= 0x80  # every byte but a value's last: more follow
    return count, groups[position < count[:, None]]


def _tag(tag: int, present: np.ndarray) -> _Piece:
    return present.astype(np.int64), np.full(int(present.sum()), tag, np.uint8)


def _size(lengths: np.ndarray, present: np.ndarray) -> _Piece:
    """The varint of each present row's length (nothing for the others)."""
    counts, data = varints(lengths)
    return np.where(present, counts, 0), data[np.repeat(present, counts)]


def _concat_rows(pieces: Sequence[_Piece], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's pieces in order, rows end to end: (row offsets int64 [n + 1], bytes)."""
    lengths = np.stack([p[0] for p in pieces], axis=1) if pieces else np.zeros((rows, 0), np.int64)
    offsets = np.zeros(rows + 1, np.int64)
    np.cumsum(lengths.sum(axis=1), out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint8)
    before = np.cumsum(lengths, axis=1) - lengths  # where each piece starts within its row
    for j, (length, data) in enumerate(pieces):
        if not len(data):
            continue
        starts = offsets[:-1] + before[:, j]
        within = np.arange(len(data), dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)
        out[np.repeat(starts, length) + within] = data
    return offsets, out


def _values(column: pa.Array) -> tuple[int, list[_Piece], np.ndarray] | None:
    """(Feature tag, the List's pieces, rows where the feature is present), or None."""
    kind = column.type
    rows = len(column)
    width = 1
    values = column
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        values = column.flatten()
        kind = values.type
        if column.null_count or values.null_count:
            return None
    present = ~column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind) and width == 1:
        present &= ~np.isnan(values.fill_null(0.0).to_numpy(zero_copy_only=False))
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        if pa.types.is_floating(kind):
            array = values.fill_null(0.0).to_numpy(zero_copy_only=False)
            packed = np.ascontiguousarray(array.astype("<f4")).view(np.uint8)
            lengths = np.full(rows, 4 * width, np.int64)
            tag = 0x12
        else:
            counts, packed = varints(values.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False))
            lengths = counts.reshape(rows, width).sum(axis=1)
            tag = 0x1A
        payload = (np.where(present, lengths, 0), packed[np.repeat(present, lengths)])
        return tag, [_tag(0x0A, present), _size(lengths, present), payload], present
    if width == 1 and (pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind)
                       or pa.types.is_large_binary(kind)):
        binary = pc.fill_null(values.cast(pa.large_binary()), b"")
        offsets = np.frombuffer(binary.buffers()[1], np.int64, rows + 1, binary.offset * 8)
        data = np.frombuffer(binary.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if rows else np.empty(0, np.uint8)
        lengths = np.diff(offsets)
        payload = (np.where(present, lengths, 0), data[np.repeat(present, lengths)])
        return 0x0A, [_tag(0x0A, present), _size(lengths, present), payload], present
    return None


def _total(pieces: Sequence[_Piece]) -> np.ndarray:
    return np.sum([p[0] for p in pieces], axis=0)


def serialize(batch: pa.RecordBatch, columns: Sequence[str]) -> np.ndarray | None:
    """One serialized Example per row of `batch`, a feature per column (see the module docstring);
    None if a column is of a type handled only row by row."""
    rows = batch.num_rows
    pieces: list[_Piece] = []
    for name in columns:
        found = _values(batch.column(name))
        if found is None:
            return None
        tag, list_pieces, present = found
        list_length = _total(list_pieces)  # List
        feature = [_tag(tag, present), _size(list_length, present), *list_pieces]
        key = name.encode()
        header = b"\x0a" + varints(np.array([len(key)]))[1].tobytes() + key + b"\x12"
        constant = (np.where(present, len(header), 0), np.tile(np.frombuffer(header, np.uint8), int(present.sum())))
        entry = [constant, _size(_total(feature), present), *feature]  # the map entry: key, Feature
        pieces += [_tag(0x0A, present), _size(_total(entry), present), *entry]
    everyone = np.ones(rows, bool)
    features = _total(pieces) if pieces else np.zeros(rows, np.int64)
    offsets, data = _concat_rows([_tag(0x0A, everyone), _size(features, everyone), *pieces], rows)
    binary = pa.Array.from_buffers(pa.large_binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    out = np.empty(rows, dtype=object)
    out[:] = binary.to_numpy(zero_copy_only=False)
    return out
