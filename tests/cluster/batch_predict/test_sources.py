"""Listing inputs, cutting work units and reading them, bad rows counted: without Ray."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.batch_predict import reading, tfrecord
from cluster.batch_predict.reading import read_unit
from cluster.batch_predict.sources import InputError, list_files, plan_units
from protos.tessera import example_pb2


def _read(path: pathlib.Path, file_format: str, batch_size: int = 100, **kw: bool) -> tuple[pa.Table, list]:
    (unit,) = plan_units(list_files([str(path)]), file_format, 1 << 20)
    chunks = list(read_unit(unit, file_format, batch_size, **kw))
    batches = [c.batch for c in chunks if c.batch.num_rows]
    return pa.Table.from_batches(batches) if batches else pa.table({}), [b for c in chunks for b in c.bad]


def test_listing_skips_markers_and_takes_patterns(tmp_path: pathlib.Path) -> None:
    for name in ["a.csv", "b.csv", "c.json", "_SUCCESS", ".a.csv.crc", "sub/d.csv", "_tmp/e.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    names = [pathlib.Path(p).relative_to(tmp_path).as_posix() for _, p in list_files([str(tmp_path)])]
    assert names == ["a.csv", "b.csv", "c.json", "sub/d.csv"]
    assert [pathlib.Path(p).name for _, p in list_files([str(tmp_path / "*.csv")])] == ["a.csv", "b.csv"]
    with pytest.raises(InputError, match="does not exist"):
        list_files([str(tmp_path / "nope")])
    with pytest.raises(InputError, match="holds no files"):
        list_files([str(tmp_path / "*.parquet")])


def test_parquet_units_are_runs_of_row_groups(tmp_path: pathlib.Path) -> None:
    pq.write_table(pa.table({"a": np.arange(1000)}), tmp_path / "x.parquet", row_group_size=100)
    units = plan_units(list_files([str(tmp_path)]), "parquet", 250)
    assert [u.row_groups for u in units] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [u.first_row for u in units] == [0, 200, 400, 600, 800]
    rows = [b.batch.column("a").to_pylist() for b in read_unit(units[1], "parquet", 64)]
    assert sum(rows, []) == list(range(200, 400)) and max(len(r) for r in rows) == 64


def test_parquet_is_decoded_in_reads_bounded_by_rows_and_bytes(tmp_path: pathlib.Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = pa.schema([("a", pa.int64()), ("v", pa.list_(pa.float32(), 4)), ("ok", pa.bool_())])  # 25 bytes
    assert reading._row_bytes(fixed) == 25
    assert reading._read_rows(fixed, 64) == reading.READ_ROWS
    monkeypatch.setattr(reading, "READ_BYTES", 2500)
    assert reading._read_rows(fixed, 64) == 100
    assert reading._read_rows(fixed, 500) == 500  # never less than one batch
    assert reading._read_rows(pa.schema([("a", pa.int64()), ("s", pa.string())]), 64) == 64  # no fixed size
    pq.write_table(pa.table({"a": np.arange(1000)}), tmp_path / "x.parquet", row_group_size=300)
    (unit,) = plan_units(list_files([str(tmp_path)]), "parquet", 1 << 20)
    chunks = list(read_unit(unit, "parquet", 64))
    assert pa.Table.from_batches([c.batch for c in chunks]).column("a").to_pylist() == list(range(1000))
    assert max(c.batch.num_rows for c in chunks) == 64  # the model still gets batches of at most 64


def test_csv_bad_lines_are_counted_not_fatal(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "BLOCK_BYTES", 64)  # many blocks, records cut across reads
    lines = ["id,x,name"] + [f'{i},{i / 2},"n {i}"' for i in range(40)]
    lines[5] = "4,oops,bad type"  # the types of the first block say x is a double
    lines[30] = "29,1.0"  # a field short
    lines.insert(10, '99,0.5,"a quoted\nnewline"')
    (tmp_path / "in.csv").write_text("\n".join(lines))  # no final newline
    table, bad = _read(tmp_path / "in.csv", "csv", batch_size=7)
    assert table.num_rows == 39 and table.schema.names == ["id", "x", "name"]
    assert table.schema.field("x").type == pa.float64()
    assert b"a quoted\nnewline" in [v.encode() for v in table.column("name").to_pylist()]
    assert sorted(b.position for b in bad) == [6, 32]  # file lines, 1-based, the header is line 1
    assert {b.raw for b in bad} == {"4,oops,bad type", "29,1.0"}


def test_json_lines_bad_lines(tmp_path: pathlib.Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"a": 1.5, "b": "x"}\n{"a": 2.5}\nnot json\n{"a": "str"}\n{"a": 3, "c": 1}\n')
    table, bad = _read(tmp_path / "in.jsonl", "json")
    assert table.column("a").to_pylist() == [1.5, 2.5, 3.0]
    assert table.column("b").to_pylist() == ["x", None, None]
    assert sorted(b.position for b in bad) == [3, 4]


def _example(**features: float) -> bytes:
    example = example_pb2.Example()
    for name, value in features.items():
        example.features.feature[name].float_list.value.append(value)
    return example.SerializeToString()


def test_tfrecord_records_checked_and_decoded(tmp_path: pathlib.Path) -> None:
    good = [tfrecord.encode_record(_example(a=float(i), b=1.0)) for i in range(5)]
    corrupt = bytearray(good[2])
    corrupt[-6] ^= 0xFF  # data no longer matches its checksum
    good[2] = bytes(corrupt)
    good.append(tfrecord.encode_record(b"\x0a\xff"))  # framed fine, not an Example
    (tmp_path / "in.tfrecord").write_bytes(b"".join(good) + good[0][:20])  # cut short at the end
    table, bad = _read(tmp_path / "in.tfrecord", "tfrecord")
    assert table.column("a").to_pylist() == [0.0, 1.0, 3.0, 4.0] and table.schema.field("a").type == pa.float32()
    assert [(b.position, b.error) for b in sorted(bad, key=lambda b: b.position)] == [
        (2, "corrupt record data (checksum mismatch)"), (5, "not a serialized tf.Example"),
        (6, "file ends inside a record")]
    records, bad = _read(tmp_path / "in.tfrecord", "tfrecord", keep_records=True)
    assert records.schema.names == [tfrecord.RECORD_COLUMN] and records.num_rows == 5 and len(bad) == 2


def test_tfrecord_list_features_become_list_columns() -> None:
    example = example_pb2.Example()
    example.features.feature["v"].int64_list.value.extend([1, 2])
    batch, bad = tfrecord.decode_examples([example.SerializeToString(), _example(a=1.0)])
    assert not bad and batch.column("v").to_pylist() == [[1, 2], None] and batch.column("a").to_pylist() == [None, 1.0]
