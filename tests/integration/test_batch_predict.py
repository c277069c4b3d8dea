"""batch-predict on a real local Ray (one per module): workers as actors, resources that fit, a
job that cannot fit failing fast, output published whole or not at all."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cluster.batch_predict.output import SUCCESS_FILE, OutputExistsError
from cluster.batch_predict.predict import _start_workers, main, run, start_ray
from cluster.batch_predict.resources import UnschedulableError
from cluster.batch_predict.worker import BatchJob
from examples.export_models import IRIS_FEATURES, export_trained, train_iris

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """The embedded Ray `tessera batch-predict` starts (start_ray), with 2 CPUs: this module's own,
    in place of the shared fixture, since how it starts its workers is under test."""
    import ray

    saved = dict(os.environ)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    assert start_ray(None, num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, object]:
    base = tmp_path_factory.mktemp("models") / "iris"
    trained = train_iris()
    export_trained(trained, str(base))
    return base, trained


def _table(trained: object, start: int = 0) -> pa.Table:
    rows = trained.x_test  # type: ignore[attr-defined]
    columns = {name: rows[:, i].astype(np.float32) for i, name in enumerate(IRIS_FEATURES)}
    return pa.table({"id": np.arange(start, start + len(rows)), **columns})


def test_classify_over_parquet_on_two_workers(local_ray: None, iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    n = len(trained.x_test)
    for f in range(3):
        pq.write_table(_table(trained, f * n), tmp_path / f"in-{f}.parquet")
    inputs = [str(tmp_path / "in-*.parquet")]
    report = run(BatchJob(str(base)), inputs, str(tmp_path / "out"), concurrency=2)
    counts = report.counts
    assert (report.units, report.workers, report.num_cpus) == (3, 2, 1.0)
    assert (counts.rows_read, counts.rows_written, counts.rows_failed, counts.bad_rows) == (3 * n, 3 * n, 0, 0)
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("id").to_pylist() == list(range(3 * n))
    expected = np.tile(trained.estimator.predict_proba(trained.x_test), (3, 1))  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array(out.column("scores").to_pylist()), expected, atol=1e-5)
    assert out.schema.field("scores").type == pa.list_(pa.float32(), 3)
    assert json.loads((tmp_path / "out" / SUCCESS_FILE).read_text())["rows_written"] == 3 * n
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(BatchJob(str(base)), inputs, str(tmp_path / "out"))
    run(BatchJob(str(base)), [str(tmp_path / "in-0.parquet")], str(tmp_path / "out"), overwrite=True)
    assert pq.read_table(tmp_path / "out").num_rows == n  # replaced, not appended


def test_a_job_that_cannot_be_scheduled_fails_instead_of_hanging(
    local_ray: None, iris: tuple, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, trained = iris
    pq.write_table(_table(trained), tmp_path / "in.parquet")
    args = [f"--model_path={base}", f"--input={tmp_path / 'in.parquet'}", f"--output={tmp_path / 'out'}"]
    assert main([*args, "--concurrency=3", "--num_cpus=1"]) == 1  # the local Ray has 2 CPUs
    assert "3 workers of 1 CPUs need 3 CPUs; the cluster has 2" in capsys.readouterr().err
    # On a cluster that might grow, workers get until the timeout to be placed.
    with pytest.raises(UnschedulableError, match="were not placed within 1 s"):
        run(BatchJob(str(base)), [str(tmp_path / "in.parquet")], str(tmp_path / "out"), concurrency=1,
            num_cpus=4, can_grow=True, schedule_timeout_s=1)
    # Fractional CPUs: three workers on two CPUs.
    run(BatchJob(str(base)), [str(tmp_path / "in.parquet")], str(tmp_path / "out"), concurrency=3)
    assert pq.read_table(tmp_path / "out").num_rows == len(trained.x_test)  # type: ignore[attr-defined]


def test_the_command_over_csv_to_json_lines_and_a_failing_job(
    local_ray: None, iris: tuple, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, trained = iris
    table = _table(trained)
    lines = pacsv.write_csv(table, tmp_path / "in.csv") or (tmp_path / "in.csv").read_text().splitlines()
    lines.insert(3, "1,2")  # a bad line: counted and written to the errors file, not fatal
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    args = [f"--model_path={base}", "--signature=predict", f"--input={tmp_path / 'in.csv'}", "--input_format=csv",
            "--input_columns=x:" + ",".join(IRIS_FEATURES), "--output_format=json", f"--output={tmp_path / 'out'}"]
    assert main(args) == 0
    n = len(trained.x_test)  # type: ignore[attr-defined]
    assert f"rows read: {n + 1}, rows written: {n}, rows failed: 0, bad rows: 1" in capsys.readouterr().out
    rows = sorted((json.loads(line) for line in (tmp_path / "out" / "part-00000.jsonl").read_text().splitlines()),
                  key=lambda r: r["id"])
    assert [r["class_ids"] for r in rows] == trained.estimator.predict(trained.x_test).tolist()  # type: ignore[attr-defined]
    assert (tmp_path / "out" / "_errors" / "part-00000.jsonl").is_file()
    # A model that does not load: exit 1, the reason printed, and no output left behind.
    assert main([*args[1:], f"--model_path={tmp_path / 'nope'}", f"--output={tmp_path / 'out2'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out"]


def test_workers_on_the_embedded_ray_run_at_the_commands_priority(local_ray: None, iris: tuple) -> None:
    import ray

    base, _ = iris
    workers, _ = _start_workers(BatchJob(str(base)), 2, None, can_grow=False, whole_cluster=True, timeout_s=60)
    try:
        niceness = ray.get([w.__ray_call__.remote(lambda self: os.nice(0)) for w in workers])
    finally:
        for w in workers:
            ray.kill(w)
    assert niceness == [os.nice(0)] * 2  # not Ray's default 15: a worker is the job, as a plain loop is
