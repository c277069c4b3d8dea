"""Reading one work unit (`sources.Unit`) as Arrow batches, and the rows that do not decode.

Reading streams: memory is bounded by the block and batch sizes, not by the file. Parquet is
decoded up to READ_ROWS rows (READ_BYTES bytes) at a time and handed on in batches (views); text
formats are parsed a block of whole lines at a time.

Bad rows are reported, not raised: a CSV or JSON line that does not parse (or does not fit the types
of the file's first block), a TFRecord record that fails its checksum or is no Example. A Parquet
file that cannot be read at all fails the job: it has no rows to count.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from cluster.batch_predict import tfrecord
from cluster.batch_predict.sources import FORMATS, InputError, Unit
from exporter import storage

BLOCK_BYTES = 4 << 20  # text formats are parsed a block of whole lines at a time
# Parquet is decoded up to this many rows (and bytes) at a time, then handed on in batches (views).
READ_ROWS = 1 << 16
READ_BYTES = 16 << 20


@dataclass(frozen=True)
class BadRow:
    """A row that could not be decoded, or that the model refused. `position` counts `unit`s:
    "line" (1-based, text files), "record" (0-based, TFRecord), "row" (0-based, among the file's
    decoded rows: where a prediction failed)."""

    path: str
    position: int
    error: str
    raw: str = ""
    unit: str = "line"


@dataclass
class Chunk:
    batch: pa.RecordBatch  # the rows that decoded
    bad: list[BadRow]


def _row_bytes(schema: pa.Schema) -> int | None:
    """The decoded size of a row, if every column has a fixed width (numbers, fixed-size lists of
    numbers); None otherwise (strings, lists: only reading tells)."""
    total = 0
    for kind in schema.types:
        count = 1
        while pa.types.is_fixed_size_list(kind):
            count, kind = count * kind.list_size, kind.value_type
        try:
            total += count * max(1, kind.bit_width // 8)
        except ValueError:  # not a fixed-width type
            return None
    return total


def _read_rows(schema: pa.Schema, batch_size: int) -> int:
    """How many rows to decode at a time: Arrow's cost per call is paid per read rather than per
    model batch (measured: 7% of a worker's CPU on narrow rows), up to READ_BYTES decoded, and at
    least one batch. Rows of no fixed size are decoded a batch at a time."""
    row_bytes = _row_bytes(schema)
    if row_bytes is None:
        return batch_size
    return max(batch_size, min(READ_ROWS, READ_BYTES // max(1, row_bytes)))


def read_unit(unit: Unit, file_format: str, batch_size: int, *, keep_records: bool = False) -> Iterator[Chunk]:
    """The unit's rows in batches of at most `batch_size`. TFRecord: with `keep_records` each record
    is one row of `tfrecord.RECORD_COLUMN`, else its Example is decoded into columns."""
    fs, _ = storage.resolve(unit.source)
    if file_format == "parquet":
        with fs.open_input_file(unit.path) as handle:
            file = pq.ParquetFile(handle)
            groups = list(unit.row_groups) or None
            for batch in file.iter_batches(batch_size=_read_rows(file.schema_arrow, batch_size), row_groups=groups):
                for start in range(0, batch.num_rows, batch_size):
                    yield Chunk(batch.slice(start, batch_size), [])
        return
    with fs.open_input_stream(unit.path) as stream:
        if file_format == "tfrecord":
            yield from _tfrecord_chunks(unit.path, stream, batch_size, keep_records)
        elif file_format in ("csv", "json"):
            yield from _text_chunks(unit.path, stream, file_format, batch_size)
        else:
            raise InputError(f"unknown input format {file_format!r}; known: {', '.join(FORMATS)}")


def _tfrecord_chunks(path: str, stream: object, batch_size: int, keep_records: bool) -> Iterator[Chunk]:
    records: list[bytes] = []
    positions: list[int] = []
    bad: list[BadRow] = []

    def flush() -> Chunk:
        if keep_records:
            chunk = Chunk(tfrecord.records_batch(records), bad[:])
        else:
            batch, undecoded = tfrecord.decode_examples(records)
            chunk = Chunk(batch, bad[:] + [BadRow(path, positions[i], why, unit="record") for i, why in undecoded])
        records.clear()
        positions.clear()
        bad.clear()
        return chunk

    for record in tfrecord.read_records(stream):
        if record.data is None:
            bad.append(BadRow(path, record.index, record.error, unit="record"))
        else:
            records.append(record.data)
            positions.append(record.index)
        if len(records) >= batch_size:
            yield flush()
    if records or bad:
        yield flush()


def _record_ends(block: bytes, csv: bool) -> np.ndarray:
    """Offsets of the newlines that end a record (for CSV: outside double quotes)."""
    data = np.frombuffer(block, np.uint8)
    newlines = data == 10
    if csv:
        newlines &= (np.cumsum(data == 34) % 2) == 0
    return np.flatnonzero(newlines)


def _blocks(stream: object, csv: bool) -> Iterator[bytes]:
    """Blocks of whole records (the last one completed with a newline)."""
    pending = b""
    while True:
        data = stream.read(BLOCK_BYTES)  # type: ignore[attr-defined]
        if not data:
            if pending.strip():
                yield pending if pending.endswith(b"\n") else pending + b"\n"
            return
        buf = pending + bytes(data)
        ends = _record_ends(buf, csv)
        if not len(ends):
            pending = buf
            continue
        cut = int(ends[-1]) + 1
        yield buf[:cut]
        pending = buf[cut:]


class _TextParser:
    """Parses blocks of CSV or JSON lines, the types fixed by the file's first block."""

    def __init__(self, file_format: str, header: bytes = b"") -> None:
        self._csv = file_format == "csv"
        self._schema: pa.Schema | None = None
        self._names: list[str] = []
        if self._csv:
            self._names = pacsv.read_csv(io.BytesIO(header + b"\n")).schema.names

    @property
    def schema(self) -> pa.Schema | None:
        """The file's types, once a block has parsed."""
        return self._schema

    def parse(self, block: bytes) -> pa.Table:
        if self._csv:
            convert = pacsv.ConvertOptions(column_types=self._schema) if self._schema else None
            table = pacsv.read_csv(io.BytesIO(block), read_options=pacsv.ReadOptions(column_names=self._names),
                                   convert_options=convert)
        else:
            options = pajson.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="ignore") if (
                self._schema) else None
            table = pajson.read_json(io.BytesIO(block), parse_options=options)
        if self._schema is None:
            self._schema = table.schema
        return table.cast(self._schema) if table.schema != self._schema else table


def _text_chunks(path: str, stream: object, file_format: str, batch_size: int) -> Iterator[Chunk]:
    csv = file_format == "csv"
    blocks = _blocks(stream, csv)
    header = b""
    line = 1
    if csv:
        first = next(blocks, b"")
        end = int(_record_ends(first, csv)[0]) if first else 0
        header, rest = first[:end], first[end + 1:]
        blocks = iter([rest, *blocks]) if rest else blocks
        line = 2
    parser = _TextParser(file_format, header)
    for block in blocks:
        bad: list[BadRow] = []
        try:
            table = parser.parse(block)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            table = _line_by_line(parser, path, block, csv, line, bad)
        line += int(len(_record_ends(block, csv)))
        batches = table.combine_chunks().to_batches(max_chunksize=batch_size) if table.num_rows else []
        for i, batch in enumerate(batches):
            yield Chunk(batch, bad if i == 0 else [])
        if not batches and bad:
            yield Chunk(pa.RecordBatch.from_pylist([], schema=table.schema), bad)


def _line_by_line(parser: _TextParser, path: str, block: bytes, csv: bool, first_line: int,
                  bad: list[BadRow]) -> pa.Table:
    """A block that failed to parse, record by record: the good ones as one table, the rest in `bad`."""
    starts = np.concatenate([[0], _record_ends(block, csv) + 1])
    good: list[pa.Table] = []
    for i in range(len(starts) - 1):
        record = block[starts[i]:starts[i + 1]]
        if not record.strip():
            continue
        try:
            good.append(parser.parse(record))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            text = record.decode("utf-8", "replace").rstrip("\n")
            bad.append(BadRow(path, first_line + i, str(exc).splitlines()[0], text[:1000]))
    if parser.schema is None:
        raise InputError(f"{path}: no line of the first block parses; is it {'CSV' if csv else 'JSON lines'}?")
    return pa.concat_tables(good) if good else parser.schema.empty_table()
