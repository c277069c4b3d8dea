"""Feature columns: parse specs, and the dense input layer computed in the graph vs by hand."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from exporter import dtypes
from exporter import feature_columns as fc
from exporter.export import build_model
from exporter.features import FixedLenFeature, VarLenFeature
from exporter.ops.categorical import fingerprint64
from exporter.outputs import PredictOutput
from exporter.receivers import build_parsing_serving_input_receiver_fn, build_raw_serving_input_receiver_fn
from protos.tessera import example_pb2

AGE = fc.numeric_column("age", default_value=40.0)
COLOR = fc.categorical_column_with_vocabulary_list("color", ["red", "green", "blue"], num_oov_buckets=2)
EMB_W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def make_columns(tmp_path: pathlib.Path) -> list[fc.FeatureColumn]:
    (tmp_path / "sizes.txt").write_bytes(b"7\n3\n11\n99\n")
    sizes = fc.categorical_column_with_vocabulary_file("size", tmp_path / "sizes.txt", vocabulary_size=3,
                                                       dtype=dtypes.INT64)  # fmt: skip
    city = fc.categorical_column_with_hash_bucket("city", 4)
    return [
        fc.indicator_column(COLOR),
        AGE,
        fc.bucketized_column(AGE, [18, 30, 65]),
        fc.embedding_column(city, 3, EMB_W, combiner="sqrtn"),
        fc.indicator_column(sizes),
    ]


RECORDS = [
    {"age": 20.0, "color": ["red", "blue"], "city": ["paris"], "size": [3]},
    {"color": ["purple", "red", "red"], "city": ["rome", "oslo"], "size": [99, 11]},  # age: default
    {"age": 70.0, "color": [], "city": [], "size": []},
]


def serialize(record: dict) -> bytes:
    ex = example_pb2.Example()
    for key, value in record.items():
        if isinstance(value, float):
            ex.features.feature[key].float_list.value.append(value)
        elif value and isinstance(value[0], int):
            ex.features.feature[key].int64_list.value.extend(value)
        elif value:
            ex.features.feature[key].bytes_list.value.extend(v.encode() for v in value)
    return ex.SerializeToString()


def expected_row(record: dict) -> np.ndarray:
    """The input layer by hand, in column-name order: age, age_bucketized, city_embedding,
    color_indicator, size_indicator."""
    age = record.get("age", 40.0)
    buckets = np.zeros(4)
    buckets[int(np.searchsorted([18, 30, 65], age, side="right"))] = 1
    ids = (fingerprint64(np.array([c.encode() for c in record["city"]], dtype=object)) % np.uint64(4)).astype(int)
    emb = EMB_W[ids].sum(axis=0) / np.sqrt(len(ids)) if len(ids) else np.zeros(3)
    color = np.zeros(5)
    for c in record["color"]:
        vocab = ["red", "green", "blue"]
        color[vocab.index(c) if c in vocab else 3 + int(fingerprint64(np.array([c.encode()], dtype=object))[0] % 2)] += 1
    size = np.zeros(3)
    for s in record["size"]:
        if s in (7, 3, 11):
            size[[7, 3, 11].index(s)] += 1
    return np.concatenate([[age], buckets, emb, color, size])


def test_parse_spec_is_the_union_of_the_columns(tmp_path: pathlib.Path) -> None:
    spec = fc.make_parse_example_spec(make_columns(tmp_path))
    assert list(spec) == ["age", "city", "color", "size"]
    assert spec["age"] == FixedLenFeature((1,), dtypes.FLOAT, np.array([40.0]))
    assert spec["color"] == VarLenFeature(dtypes.STRING) and spec["size"] == VarLenFeature(dtypes.INT64)
    with pytest.raises(ValueError, match="parsed two ways"):
        fc.make_parse_example_spec([AGE, fc.numeric_column("age", shape=2)])


def test_input_layer_over_parsed_examples_matches_by_hand(tmp_path: pathlib.Path) -> None:
    columns = make_columns(tmp_path)
    receiver = build_parsing_serving_input_receiver_fn(fc.make_parse_example_spec(columns))
    built = build_model(lambda g, f: {"predict": PredictOutput({"x": fc.input_layer(f, columns)})}, receiver)
    assert set(built.graph.assets) == {"color_vocabulary.txt", "sizes.txt"}
    assert built.graph.assets["sizes.txt"] == b"7\n3\n11\n"  # vocabulary_size keeps the first lines
    rt = built.runtime(tmp_path / "assets")
    out = rt.run("predict", {"examples": np.array([serialize(r) for r in RECORDS], dtype=object)})["x"]
    assert out.dtype == np.float32 and out.shape == (3, 1 + 4 + 3 + 5 + 3)
    np.testing.assert_allclose(out, np.stack([expected_row(r) for r in RECORDS]), rtol=1e-6)


def test_categorical_columns_take_dense_raw_inputs_and_drop_missing(tmp_path: pathlib.Path) -> None:
    columns = [fc.indicator_column(COLOR), fc.numeric_column("v", shape=2)]
    receiver = build_raw_serving_input_receiver_fn(
        {"color": (dtypes.STRING, (None, 2)), "v": (dtypes.INT64, (None, 2))}
    )
    built = build_model(lambda g, f: {"predict": PredictOutput({"x": fc.input_layer(f, columns)})}, receiver)
    rt = built.runtime(tmp_path)
    colors = np.array([[b"red", b""], [b"blue", b"blue"]], dtype=object)
    out = rt.run("predict", {"color": colors, "v": np.array([[1, 2], [3, 4]])})["x"]
    np.testing.assert_array_equal(out, [[1, 0, 0, 0, 0, 1, 2], [0, 0, 2, 0, 0, 3, 4]])


def test_bucketized_column_as_categorical_offsets_each_element() -> None:
    col = fc.bucketized_column(fc.numeric_column("p", shape=2), [0.0, 1.0])
    assert (col.num_buckets, col.dimension, col.name) == (6, 6, "p_bucketized")
    receiver = build_raw_serving_input_receiver_fn({"p": (dtypes.FLOAT, (None, 2))})

    def model(g, f):  # type: ignore[no-untyped-def]
        ids = col.sparse_ids(g, f)
        return {"predict": PredictOutput({"values": ids.values, "dense": col.dense(g, f)})}

    out = build_model(model, receiver).runtime().run("predict", {"p": np.array([[-1.0, 1.0], [0.5, 0.0]], np.float32)})
    assert out["values"].tolist() == [0, 5, 1, 4]  # element 1's buckets start at 3; a boundary goes up
    np.testing.assert_array_equal(out["dense"], [[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0]])


def test_column_argument_checks() -> None:
    with pytest.raises(ValueError, match="increasing"):
        fc.bucketized_column(AGE, [3, 1])
    with pytest.raises(ValueError, match="non-empty and unique"):
        fc.categorical_column_with_vocabulary_list("c", ["a", "a"])
    with pytest.raises(ValueError, match="all strings or all int64"):
        fc.categorical_column_with_vocabulary_list("c", ["a", 1])
    with pytest.raises(ValueError, match="weights must be"):
        fc.embedding_column(COLOR, 2, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="duplicate"):
        fc.input_layer({}, [AGE, AGE])
    with pytest.raises(TypeError, match="dense columns"):
        fc.input_layer({}, [COLOR])
