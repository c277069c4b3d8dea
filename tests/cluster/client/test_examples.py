"""cluster.client.examples: tf.Example builders."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.client.examples import (
    example_to_dict,
    float_feature,
    make_example,
    make_input,
    serialize_examples,
)
from protos.tensorflow.core.example import example_pb2
from protos.tensorflow_serving.apis.internal import serialized_input_pb2


def test_feature_kinds() -> None:
    example = make_example(
        {
            "f": 1.5,
            "mixed": [1, 2.5],
            "i": 3,
            "flag": True,
            "s": "héllo",
            "b": [b"\x00\xff", b"x"],
            "arr": np.array([[1.0, 2.0]], dtype=np.float32),
            "ids": np.array([4, 5], dtype=np.int64),
            "empty": float_feature([]),
        }
    )
    kinds = {name: f.WhichOneof("kind") for name, f in example.features.feature.items()}
    assert kinds == {
        "f": "float_list", "mixed": "float_list", "i": "int64_list", "flag": "int64_list", "s": "bytes_list",
        "b": "bytes_list", "arr": "float_list", "ids": "int64_list", "empty": "float_list",
    }  # fmt: skip
    values = example_to_dict(example)
    assert values["mixed"] == [1.0, 2.5]
    assert values["flag"] == [1]
    assert values["s"] == ["héllo".encode()]
    assert values["b"] == [b"\x00\xff", b"x"]
    assert values["arr"] == [1.0, 2.0]
    assert values["empty"] == []


@pytest.mark.parametrize("value, message", [([], "empty list"), ([1, "a"], "all numbers or all strings")])
def test_ambiguous_values_are_refused_with_the_feature_name(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"feature 'x': .*{message}"):
        make_example({"x": value})


def test_serialized_examples_round_trip() -> None:
    raw = serialize_examples([{"x": 1.0}, make_example({"y": [1, 2]})])
    assert [example_to_dict(r) for r in raw] == [{"x": [1.0]}, {"y": [1, 2]}]
    assert example_pb2.Example.FromString(raw[0]) == make_example({"x": 1.0})


def test_make_input_with_and_without_context() -> None:
    plain = make_input([{"x": 1.0}])
    assert plain.WhichOneof("kind") == "example_list" and len(plain.example_list.examples) == 1
    with_context = make_input([{"x": 1.0}, {"x": 2.0}], context={"c": "ctx"})
    server = serialized_input_pb2.SerializedInput.FromString(with_context.SerializeToString())
    body = server.example_list_with_context
    assert example_to_dict(body.context) == {"c": [b"ctx"]}
    assert [example_to_dict(body.context + e) for e in body.examples] == [
        {"c": [b"ctx"], "x": [1.0]},
        {"c": [b"ctx"], "x": [2.0]},
    ]
