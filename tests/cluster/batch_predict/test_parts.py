"""Output parts: Parquet in row groups of many batches, dictionary encoding where values repeat."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cluster.batch_predict import parts
from cluster.batch_predict.parts import PartWriter, dictionary_columns

FS = pafs.LocalFileSystem()


def _table(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows)
    return pa.table({"id": ids, "country": pa.array(["fr", "de"] * (rows // 2)),
                     "class_ids": ids % 3, "scores": (ids / 7).astype(np.float32)})


def test_batches_are_gathered_into_row_groups(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "ROW_GROUP_ROWS", 100)
    writer = PartWriter("parquet", FS, str(tmp_path / "p.parquet"), ["class_ids", "scores"])
    for start in range(0, 320, 16):
        writer.write(_table(start, 16))
    writer.close()
    part = pq.ParquetFile(tmp_path / "p.parquet")
    assert [part.metadata.row_group(i).num_rows for i in range(part.num_row_groups)] == [112, 112, 96]
    assert part.read().equals(pa.concat_tables([_table(s, 16) for s in range(0, 320, 16)]))


def test_dictionary_encoding_only_where_values_repeat(tmp_path: pathlib.Path) -> None:
    first = _table(0, 1000)
    # Unique ids and float scores: plain; repeated countries (passthrough) and class ids (an
    # integer output): dictionary.
    assert dictionary_columns(first, ["class_ids", "scores"]) == ["country", "class_ids"]
    writer = PartWriter("parquet", FS, str(tmp_path / "p.parquet"), ["class_ids", "scores"])
    writer.write(first)
    writer.close()
    meta = pq.ParquetFile(tmp_path / "p.parquet").metadata.row_group(0)
    encoded = {meta.column(i).path_in_schema: meta.column(i).has_dictionary_page for i in range(meta.num_columns)}
    assert encoded == {"id": False, "country": True, "class_ids": True, "scores": False}
    nested = pa.table({"v": pa.array([[1, 2]] * 4, pa.list_(pa.int64(), 2))})
    assert dictionary_columns(nested, []) == ["v"]  # pyarrow's default where no count is defined


def test_later_tables_take_the_first_schema_and_a_failed_unit_writes_nothing_more(tmp_path: pathlib.Path) -> None:
    writer = PartWriter("parquet", FS, str(tmp_path / "p.parquet"), [])
    writer.write(pa.table({"x": pa.array([1, 2], pa.int64())}))
    writer.write(pa.table({"x": pa.array([3], pa.int32())}))
    writer.close(complete=False)
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 0  # still buffered when the unit failed
    writer = PartWriter("parquet", FS, str(tmp_path / "q.parquet"), [])
    writer.write(pa.table({"x": pa.array([1, 2], pa.int64())}))
    writer.write(pa.table({"x": pa.array([3], pa.int32())}))
    writer.close()
    assert pq.read_table(tmp_path / "q.parquet").column("x").to_pylist() == [1, 2, 3]


def test_json_lines_and_no_file_without_rows(tmp_path: pathlib.Path) -> None:
    writer = PartWriter("json", FS, str(tmp_path / "p.jsonl"), [])
    writer.write(pa.table({"b": [b"\x00\xff"], "s": ["x"]}))
    writer.close()
    assert json.loads((tmp_path / "p.jsonl").read_text()) == {"b": {"b64": "AP8="}, "s": "x"}
    PartWriter("parquet", FS, str(tmp_path / "none.parquet"), []).close()
    assert not (tmp_path / "none.parquet").exists()
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        PartWriter("xml", FS, str(tmp_path / "p.xml"), [])
