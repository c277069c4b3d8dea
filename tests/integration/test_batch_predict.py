"""Offline batch prediction on Ray Data over Parquet and CSV: the served bundles, the same answers."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cluster.batch.predict import BatchJob, run
from examples.export_models import IRIS_FEATURES, export_trained, train_iris

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, object]:
    base = tmp_path_factory.mktemp("models") / "iris"
    trained = train_iris()
    export_trained(trained, str(base))
    return base, trained


def _table(trained: object) -> pa.Table:
    rows = trained.x_test  # type: ignore[attr-defined]
    return pa.table({name: rows[:, i].astype(np.float32) for i, name in enumerate(IRIS_FEATURES)})


def _inputs(out: dict) -> np.ndarray:
    # Expected answers are computed from each output row's own inputs: row order is Ray Data's.
    return np.column_stack([out[name] for name in IRIS_FEATURES]).astype(np.float64)


def test_classify_signature_over_parquet(local_ray: None, iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    pq.write_table(_table(trained), tmp_path / "in.parquet")
    rows = run(BatchJob(str(base)), [str(tmp_path / "in.parquet")], str(tmp_path / "out"))
    out = pq.read_table(tmp_path / "out").to_pydict()
    assert rows == len(trained.x_test)  # type: ignore[attr-defined]
    expected = trained.estimator.predict_proba(_inputs(out))  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.array(out["scores"]), expected, atol=1e-5)
    assert out["classes"][0] == ["setosa", "versicolor", "virginica"]


def test_predict_signature_over_csv_with_input_columns(local_ray: None, iris: tuple, tmp_path: pathlib.Path) -> None:
    base, trained = iris
    pacsv.write_csv(_table(trained), tmp_path / "in.csv")
    job = BatchJob(str(base), "predict", {"x": IRIS_FEATURES}, batch_size=7)
    run(job, [str(tmp_path / "in.csv")], str(tmp_path / "out"), file_format="csv")
    out = pq.read_table(tmp_path / "out").to_pydict()
    expected = trained.estimator.predict(_inputs(out))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(np.array(out["class_ids"]), expected)
