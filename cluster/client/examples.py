"""Builders for `tensorflow.Example`, the input of Classify, Regress and MultiInference.

A feature value is a float, int, bool, str or bytes, a list/tuple/ndarray of them, or a ready
`tensorflow.Feature`. The list kind follows TF Serving's REST rules: any float makes a
float_list, ints and bools an int64_list, str (UTF-8) and bytes a bytes_list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from protos.tensorflow.core.example import example_pb2, feature_pb2
from protos.tensorflow_serving.apis import input_pb2

FeatureValue = Any
Features = Mapping[str, FeatureValue]


def bytes_feature(values: Iterable[bytes | str]) -> feature_pb2.Feature:
    """A bytes_list feature (str values are UTF-8 encoded); may be empty."""
    return feature_pb2.Feature(
        bytes_list=feature_pb2.BytesList(value=[v.encode() if isinstance(v, str) else bytes(v) for v in values])
    )


def float_feature(values: Iterable[float]) -> feature_pb2.Feature:
    """A float_list feature; may be empty."""
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[float(v) for v in values]))


def int64_feature(values: Iterable[int]) -> feature_pb2.Feature:
    """An int64_list feature; may be empty."""
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))


def make_feature(value: FeatureValue) -> feature_pb2.Feature:
    """One feature from a scalar or a sequence; raises ValueError if its kind cannot be told."""
    if isinstance(value, feature_pb2.Feature):
        return value
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        items = value.reshape(-1).tolist()
        if kind == "f":
            return float_feature(items)
        if kind in "iub":
            return int64_feature(items)
        if kind in "SUO":
            return bytes_feature(items)
        raise ValueError(f"cannot make a feature from a numpy {value.dtype} array")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError("an empty list has no kind: use bytes_feature/float_feature/int64_feature([])")
    if all(isinstance(v, (str, bytes)) for v in items):
        return bytes_feature(items)
    if all(isinstance(v, (int, float, bool, np.integer, np.floating, np.bool_)) for v in items):
        if any(isinstance(v, (float, np.floating)) for v in items):
            return float_feature(items)
        return int64_feature(items)
    kinds = sorted({type(v).__name__ for v in items})
    raise ValueError(f"a feature's values must be all numbers or all strings, got {kinds}")


def make_example(features: Features) -> example_pb2.Example:
    """A `tensorflow.Example` from a dict of feature name -> value(s)."""
    example = example_pb2.Example()
    for name, value in features.items():
        try:
            example.features.feature[name].CopyFrom(make_feature(value))
        except ValueError as error:
            raise ValueError(f"feature {name!r}: {error}") from None
    return example


def serialize_example(features: Features | example_pb2.Example) -> bytes:
    """The serialized Example, e.g. to feed a `tf.string` input of a Predict signature."""
    example = features if isinstance(features, example_pb2.Example) else make_example(features)
    return example.SerializeToString()


def serialize_examples(examples: Iterable[Features | example_pb2.Example]) -> list[bytes]:
    """Serializes each example (dicts are built with make_example)."""
    return [serialize_example(e) for e in examples]


def make_input(
    examples: Sequence[Features | example_pb2.Example],
    context: Features | example_pb2.Example | None = None,
) -> input_pb2.Input:
    """A `tensorflow.serving.Input`: an example_list, or example_list_with_context if `context`."""
    built = [e if isinstance(e, example_pb2.Example) else make_example(e) for e in examples]
    if context is None:
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=built))
    ctx = context if isinstance(context, example_pb2.Example) else make_example(context)
    return input_pb2.Input(
        example_list_with_context=input_pb2.ExampleListWithContext(examples=built, context=ctx)
    )


def example_to_dict(example: example_pb2.Example | bytes) -> dict[str, list[Any]]:
    """Reads an Example (or its bytes) back into feature name -> list of values."""
    if isinstance(example, bytes):
        example = example_pb2.Example.FromString(example)
    out: dict[str, list[Any]] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = list(getattr(feature, kind).value) if kind else []
    return out
