"""Writing one unit's output part: Parquet (in row groups of many batches) or JSON lines.

A part is opened on its first table (its schema is then known) and takes the unit's batches one by
one. Parquet collects them into row groups of about `ROW_GROUP_ROWS` rows (or `ROW_GROUP_BYTES`,
whichever comes first: memory stays bounded), not one row group per model batch: a row group per
8,192-row batch made the parts' footers and page headers grow with the rows, and cost every reader.

Parquet's dictionary encoding hashes every value. It pays for columns whose values repeat (a
classifier's class ids, a passthrough column of labels or countries) and is pure cost for columns
whose values are all different (float scores; passthrough ids): written slower, and larger than
plain encoding. So it is chosen per column when the part opens: integer outputs keep it, other
outputs drop it (float scores are unique; a classifier's `classes` strings, the same few on every
row, are left to compression, which costs less than hashing them); a flat passthrough column keeps
it only if the part's first batch repeats values (at most half of them distinct).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

OUTPUT_FORMATS = ("parquet", "json")
ROW_GROUP_ROWS = 1 << 17
ROW_GROUP_BYTES = 64 << 20


def _scalar_type(kind: pa.DataType) -> pa.DataType:
    while pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return kind


def _repeats(column: pa.ChunkedArray) -> bool:
    """Whether a column's values repeat enough for a dictionary to pay (see the module docstring)."""
    if pa.types.is_nested(column.type):
        return True  # pyarrow's default; the distinct count is not defined for lists
    return int(pc.count_distinct(column, mode="all").as_py()) * 2 <= max(1, len(column))


def dictionary_columns(first: pa.Table, outputs: Collection[str]) -> list[str]:
    """The columns of a part written with dictionary encoding, decided on its first table."""
    return [f.name for f in first.schema
            if (pa.types.is_integer(_scalar_type(f.type)) if f.name in outputs else _repeats(first.column(f.name)))]


class _ParquetPart:
    def __init__(self, fs: Any, path: str, first: pa.Table, outputs: Collection[str]) -> None:
        self.schema = first.schema
        self._writer = pq.ParquetWriter(path, first.schema, filesystem=fs,
                                        use_dictionary=dictionary_columns(first, outputs))
        self._pending: list[pa.Table] = []
        self._rows = self._bytes = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            # One row group however many tables (write_table would cut at its own default size).
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=max(1, self._rows))
        self._pending, self._rows, self._bytes = [], 0, 0

    def close(self, complete: bool) -> None:
        if complete:
            self._flush()
        self._writer.close()


class _JsonLinesPart:
    """JSON lines: one object per row; binary values as {"b64": ...} (Cloud ML Engine's convention)."""

    def __init__(self, fs: Any, path: str, first: pa.Table) -> None:
        self.schema = first.schema
        self._stream = fs.open_output_stream(path)

    def write(self, table: pa.Table) -> None:
        self._stream.write("".join(json.dumps(r, default=_b64) + "\n" for r in table.to_pylist()).encode())

    def close(self, complete: bool) -> None:
        self._stream.close()


def _b64(value: object) -> object:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class PartWriter:
    """One part file at `path` (in filesystem `fs`), created on the first `write`, so a unit
    without rows leaves no part. Later tables are cast to the first one's schema."""

    def __init__(self, output_format: str, fs: Any, path: str, outputs: Collection[str]) -> None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {output_format!r}; known: {', '.join(OUTPUT_FORMATS)}")
        self._format, self._fs, self._path, self._outputs = output_format, fs, path, outputs
        self._part: _ParquetPart | _JsonLinesPart | None = None

    def write(self, table: pa.Table) -> None:
        if self._part is None:
            self._part = (_ParquetPart(self._fs, self._path, table, self._outputs) if self._format == "parquet"
                          else _JsonLinesPart(self._fs, self._path, table))
        schema = self._part.schema
        self._part.write(table if table.schema == schema else table.cast(schema))

    def close(self, complete: bool = True) -> None:
        """Writes what is buffered (unless `complete` is false: the unit failed) and closes the file."""
        if self._part is not None:
            self._part.close(complete)
