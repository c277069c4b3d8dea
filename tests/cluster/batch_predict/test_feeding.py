"""Feeding signatures from columns: parsed features straight past the receiver, serialized
Examples as the fallback, stacked tensors; all without Ray."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pytest

from cluster.batch_predict.feeding import Feeder, InputSelection, _feature, serialize_rows
from cluster.batch_predict.tfrecord import RECORD_COLUMN
from examples.export_models import IRIS_FEATURES, Trained, serialize_examples
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.example_parser import parse_example
from exporter.features import FixedLenFeature, VarLenFeature
from exporter.servable import load_servable
from exporter.storage import list_versions
from tests.cluster.batch_predict.plain_loader import PlainServable


def _newest(base: pathlib.Path) -> str:
    versions = list_versions(base)
    return versions[max(versions)]


def _batch(trained: Trained, names: tuple[str, ...] | list[str]) -> pa.RecordBatch:
    x = trained.x_test
    columns = {n: pa.array(x[:, i].astype(np.float32)) for i, n in enumerate(names)}
    return pa.RecordBatch.from_pydict({"id": pa.array(np.arange(len(x))), **columns})


@pytest.mark.parametrize("model", ["iris", "diabetes"])
def test_examples_signature_fed_features_as_if_parsed(model: str, request: pytest.FixtureRequest) -> None:
    base, trained = request.getfixturevalue(model)
    names = trained.model.feature_names
    batch = _batch(trained, names)
    servable = load_servable("tensorflow", _newest(base))
    direct = Feeder(servable, servable.signatures["serving_default"], batch.schema.names, InputSelection())
    assert direct.mode == "features" and set(direct.used) == set(names)  # the id feeds nothing
    plain = PlainServable(_newest(base), None)  # type: ignore[arg-type]
    serialized = Feeder(plain, plain.signatures["serving_default"], batch.schema.names, InputSelection(tuple(names)))
    assert serialized.mode == "serialize"
    got, want = direct.run(batch), serialized.run(batch)
    assert got.keys() == want.keys()
    for alias in got:
        if got[alias].dtype == object:
            assert (got[alias] == want[alias]).all()
        else:
            np.testing.assert_allclose(got[alias], want[alias], rtol=1e-6)
    if model == "iris":
        np.testing.assert_allclose(got["scores"], trained.estimator.predict_proba(trained.x_test), atol=1e-5)
    else:
        np.testing.assert_allclose(got["outputs"].reshape(-1), trained.estimator.predict(trained.x_test), rtol=1e-4)


def test_a_missing_feature_is_named(iris: tuple) -> None:
    base, trained = iris
    servable = load_servable("tensorflow", _newest(base))
    batch = _batch(trained, IRIS_FEATURES)
    with pytest.raises(InvalidInputError, match="needs feature 'petal_width'"):
        Feeder(servable, servable.signatures["serving_default"], batch.schema.names,
               InputSelection(IRIS_FEATURES[:3]))
    with pytest.raises(InvalidInputError, match="names 'nope'"):
        Feeder(servable, servable.signatures["serving_default"], batch.schema.names, InputSelection(("nope",)))


def test_tfrecord_records_are_fed_as_they_are(iris: tuple) -> None:
    base, trained = iris
    servable = load_servable("tensorflow", _newest(base))
    batch = pa.RecordBatch.from_pydict({RECORD_COLUMN: serialize_examples(IRIS_FEATURES, trained.x_test)})
    feeder = Feeder(servable, servable.signatures["serving_default"], batch.schema.names, InputSelection())
    assert feeder.mode == "records"
    np.testing.assert_allclose(feeder.run(batch)["scores"], trained.estimator.predict_proba(trained.x_test), atol=1e-5)


def test_raw_inputs_stacked_from_columns_and_cast(iris: tuple) -> None:
    base, trained = iris
    servable = load_servable("tensorflow", _newest(base))
    sig = servable.signatures["predict"]
    batch = _batch(trained, IRIS_FEATURES)
    feeder = Feeder(servable, sig, batch.schema.names, InputSelection(stacked={"x": IRIS_FEATURES}))
    assert feeder.mode == "tensors" and feeder.used == IRIS_FEATURES
    np.testing.assert_array_equal(feeder.run(batch)["class_ids"], trained.estimator.predict(trained.x_test))
    with pytest.raises(InvalidInputError, match="--input_columns=x:"):
        Feeder(servable, sig, batch.schema.names, InputSelection())
    # A column holding the whole input (fixed-size lists), named as the input, float64 cast to float32.
    x = pa.FixedSizeListArray.from_arrays(pa.array(trained.x_test.reshape(-1)), 4)
    whole = pa.RecordBatch.from_pydict({"x": x})
    out = Feeder(servable, sig, ["x"], InputSelection()).run(whole)
    np.testing.assert_array_equal(out["class_ids"], trained.estimator.predict(trained.x_test))


def test_features_match_what_parse_example_would_give() -> None:
    batch = pa.RecordBatch.from_pydict({
        "d": pa.array([1.0, None, 3.0], pa.float32()),
        "v": pa.array([[1, 2], None, [3]], pa.list_(pa.int64())),
        "s": pa.array([5.0, None, 6.0]),
    })
    spec = {"d": FixedLenFeature((1,), dtypes.FLOAT, default_value=np.array([9.0])),
            "v": VarLenFeature(dtypes.INT64), "s": VarLenFeature(dtypes.FLOAT),
            "absent": FixedLenFeature((2,), dtypes.INT64, default_value=np.array([7, 8]))}
    parsed = parse_example(serialize_rows(batch, ["d", "v", "s"]), spec)
    for key, feature in spec.items():
        got, want = _feature(batch, key, feature), parsed[key]
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.tolist() == want.tolist(), key
        else:
            for part in ("indices", "values", "dense_shape"):
                assert getattr(got, part).tolist() == getattr(want, part).tolist(), (key, part)
                assert getattr(got, part).dtype == getattr(want, part).dtype, (key, part)


def test_serialized_rows_parse_back() -> None:
    batch = pa.RecordBatch.from_pydict({
        "a": pa.array([1.5, float("nan")]), "n": pa.array([3, 4]), "s": pa.array(["x", "y"]),
        "l": pa.array([[1.0, 2.0], [3.0, 4.0]]),
    })
    spec = {"a": VarLenFeature(dtypes.FLOAT), "n": FixedLenFeature((1,), dtypes.INT64),
            "s": FixedLenFeature((), dtypes.STRING), "l": FixedLenFeature((2,), dtypes.FLOAT)}
    parsed = parse_example(serialize_rows(batch, ["a", "n", "s", "l"]), spec)
    assert parsed["a"].values.tolist() == [1.5]  # NaN: left out of its row
    assert parsed["n"].tolist() == [[3], [4]] and parsed["s"].tolist() == [b"x", b"y"]
    assert parsed["l"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
