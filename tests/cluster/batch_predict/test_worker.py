"""A worker in-process (what each Ray actor runs): files in, typed parts and errors out."""

from __future__ import annotations

import json
import pathlib
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cluster.batch_predict import tfrecord
from cluster.batch_predict.feeding import InputSelection
from cluster.batch_predict.output import SUCCESS_FILE, OutputDir
from cluster.batch_predict.sources import list_files, plan_units
from cluster.batch_predict.worker import BatchJob, BatchWorker, Counts, version_path
from examples.export_models import IRIS_FEATURES, serialize_examples
from exporter.errors import BundleError, InvalidInputError
from exporter.servable import register_loader
from tests.s3_testlib import S3


def _table(trained: object) -> pa.Table:
    x = trained.x_test  # type: ignore[attr-defined]
    columns = {n: pa.array(x[:, i].astype(np.float32)) for i, n in enumerate(IRIS_FEATURES)}
    return pa.table({"id": np.arange(len(x)), **columns, "label": pa.array(["l"] * len(x))})


def _run(job: BatchJob, inputs: list[str], output: str) -> tuple[Counts, str]:
    worker = BatchWorker(job)
    out = OutputDir(output)
    total = Counts()
    extension = "parquet" if job.output_format == "parquet" else "jsonl"
    for unit in plan_units(list_files(inputs), job.input_format, 50):
        total.add(worker.process(unit, out.source, out.part_path(unit.index, extension), out.errors_path(unit.index)))
    out.publish(vars(total))
    return total, output


def test_classify_over_parquet_typed_outputs_and_passthrough(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    pq.write_table(_table(trained), tmp_path / "in.parquet", row_group_size=20)
    counts, out = _run(BatchJob(str(base), batch_size=16), [str(tmp_path / "in.parquet")], str(tmp_path / "out"))
    n = len(trained.x_test)
    assert counts == Counts(rows_read=n, rows_written=n)
    table = pq.read_table(out).sort_by("id")
    assert table.schema == pa.schema([("id", pa.int64()), ("label", pa.string()),
                                      ("classes", pa.list_(pa.string(), 3)), ("scores", pa.list_(pa.float32(), 3))])
    np.testing.assert_allclose(np.array(table.column("scores").to_pylist()),
                               trained.estimator.predict_proba(trained.x_test), atol=1e-5)
    assert table.column("classes")[0].as_py() == ["setosa", "versicolor", "virginica"]
    assert json.loads((tmp_path / "out" / SUCCESS_FILE).read_text())["rows_written"] == n
    dropped, _ = _run(BatchJob(str(base), drop_passthrough=True, output_filter=("scores",)),
                      [str(tmp_path / "in.parquet")], str(tmp_path / "dropped"))
    assert pq.read_table(tmp_path / "dropped").schema.names == ["scores"]


def test_rows_the_model_refuses_fail_alone(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    x = np.tile(trained.x_test, (10, 1))  # 300 rows in one batch: refused rows are found by halving
    values = x[:, 0].astype(np.float32).tolist()
    for i in (3, 7, 250):
        values[i] = None
    table = pa.table({"id": np.arange(len(x)), "sepal_length": pa.array(values, pa.float32()),
                      **{n: x[:, i].astype(np.float32) for i, n in enumerate(IRIS_FEATURES) if i}})
    pq.write_table(table, tmp_path / "in.parquet")
    counts, out = _run(BatchJob(str(base), batch_size=512), [str(tmp_path / "in.parquet")], str(tmp_path / "out"))
    n = len(x)
    assert counts == Counts(rows_read=n, rows_written=n - 3, rows_failed=3)
    written = pq.read_table(out).sort_by("id")
    kept = [i for i in range(n) if i not in (3, 7, 250)]
    assert written.column("id").to_pylist() == kept
    np.testing.assert_allclose(np.array(written.column("scores").to_pylist()),  # each row its own answer
                               trained.estimator.predict_proba(x[kept]), atol=1e-5)
    errors = [json.loads(line) for line in (tmp_path / "out" / "_errors" / "part-00000.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [3, 7, 250] and "sepal_length" in errors[0]["error"]
    assert json.loads(errors[0]["raw"])["id"] == 3


def test_predict_over_csv_with_stacked_columns_to_json_lines(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    pacsv.write_csv(_table(trained), tmp_path / "in.csv")
    job = BatchJob(str(base), signature="predict", selection=InputSelection(stacked={"x": IRIS_FEATURES}),
                   input_format="csv", output_format="json")
    counts, _ = _run(job, [str(tmp_path / "in.csv")], str(tmp_path / "out"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()]
    assert counts.rows_written == len(rows) == len(trained.x_test)
    assert set(rows[0]) == {"id", "label", "class_ids", "probabilities"}
    rows.sort(key=lambda r: r["id"])
    assert [r["class_ids"] for r in rows] == trained.estimator.predict(trained.x_test).tolist()


def test_tfrecord_examples_with_a_corrupt_record(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    records = [tfrecord.encode_record(e) for e in serialize_examples(IRIS_FEATURES, trained.x_test)]
    records[1] = records[1][:-1] + bytes([records[1][-1] ^ 1])
    (tmp_path / "in.tfrecord").write_bytes(b"".join(records))
    counts, out = _run(BatchJob(str(base), input_format="tfrecord"), [str(tmp_path)], str(tmp_path / "out"))
    assert counts == Counts(rows_read=len(records), rows_written=len(records) - 1, bad_rows=1)
    table = pq.read_table(out)
    assert table.schema.names == ["classes", "scores"]  # the record itself is not passed through
    good = np.delete(trained.x_test, 1, axis=0)
    np.testing.assert_allclose(np.array(table.column("scores").to_pylist()),
                               trained.estimator.predict_proba(good), atol=1e-5)
    (error,) = (tmp_path / "out" / "_errors" / "part-00000.jsonl").read_text().splitlines()
    assert json.loads(error) == {"path": str(tmp_path / "in.tfrecord"), "record": 1,
                                 "error": "corrupt record data (checksum mismatch)"}


def test_any_platform_through_the_loader_registry(iris: tuple, tmp_path: pathlib.Path) -> None:
    # A servable that cannot be fed parsed features: each row becomes a serialized Example.
    register_loader("plain-test", "tests.cluster.batch_predict.plain_loader:load")
    base, trained = iris
    pq.write_table(_table(trained), tmp_path / "in.parquet")
    job = BatchJob(str(base), model_platform="plain-test", selection=InputSelection(IRIS_FEATURES))
    counts, out = _run(job, [str(tmp_path / "in.parquet")], str(tmp_path / "out"))
    table = pq.read_table(out).sort_by("id")
    np.testing.assert_allclose(np.array(table.column("scores").to_pylist()),
                               trained.estimator.predict_proba(trained.x_test), atol=1e-5)
    with pytest.raises(BundleError, match="unknown model_platform 'nope'"):
        BatchWorker(BatchJob(str(base), model_platform="nope"))
    with pytest.raises(BundleError, match="no signature 'nope'"):
        BatchWorker(BatchJob(str(base), signature="nope"))


def test_an_input_column_named_like_an_output_is_refused(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    pq.write_table(_table(trained).append_column("scores", pa.array([1] * len(trained.x_test))),
                   tmp_path / "in.parquet")
    with pytest.raises(InvalidInputError, match="'scores' has the name of an output"):
        _run(BatchJob(str(base)), [str(tmp_path / "in.parquet")], str(tmp_path / "out"))


def test_version_path(iris: tuple, tmp_path: pathlib.Path) -> None:
    base, _ = iris
    (version,) = [p for p in base.iterdir() if p.name.isdigit()]
    assert version_path(str(base)) == str(version) and version_path(str(version)) == str(version)
    with pytest.raises(BundleError, match="does not exist"):
        version_path(str(tmp_path / "nope"))


def test_s3_in_and_out(iris: tuple, s3: S3) -> None:
    base, trained = iris
    prefix = uuid.uuid4().hex
    with s3.fs.open_output_stream(f"models/{prefix}/in/part-0.parquet") as f:
        pq.write_table(_table(trained), f)
    counts, _ = _run(BatchJob(str(base)), [s3.uri(f"{prefix}/in")], s3.uri(f"{prefix}/out"))
    assert counts.rows_written == len(trained.x_test)
    with s3.fs.open_input_file(f"models/{prefix}/out/part-00000.parquet") as f:
        assert pq.read_table(f).num_rows == len(trained.x_test)
    with s3.fs.open_input_stream(f"models/{prefix}/out/{SUCCESS_FILE}") as f:
        assert json.loads(f.read())["rows_read"] == len(trained.x_test)


def test_an_onnx_model_in_tritons_layout(tmp_path: pathlib.Path) -> None:
    from tests.exporter.onnx_testlib import write_onnx_version

    write_onnx_version(tmp_path / "scale", 3, 2.0)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(10)], "a": x[:, 0], "b": x[:, 1]}), tmp_path / "in.parquet")
    job = BatchJob(str(tmp_path / "scale"), model_platform="onnx", selection=InputSelection(stacked={"x": ("a", "b")}))
    counts, out = _run(job, [str(tmp_path / "in.parquet")], str(tmp_path / "out"))
    table = pq.read_table(out).sort_by("key")
    assert counts.rows_written == 10 and table.schema.names == ["key", "ids", "y"]
    assert table.schema.field("y").type == pa.list_(pa.float32(), 2) and table.schema.field("ids").type == pa.int64()
    np.testing.assert_allclose(np.array(table.column("y").to_pylist()), x * 2.0)  # k0..k9: row order
