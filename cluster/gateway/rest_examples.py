"""TF Serving's REST Classify/Regress bodies <-> `cluster.requests`' ExamplesRequest and results (spec §8.7).

A body's examples (JSON objects of features, typed per element as TF does) become serialized
tf.Examples here, as the gRPC gateway receives them; a context is serialized once and travels
once. Results are written as TF Serving writes them: per example, [label, score] pairs, or a value.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from cluster.errors import InvalidArgument
from cluster.gateway.rest_json import (
    body_signature_name,
    dumps,
    request_object,
    shortest_floats,
    text_checked,
    to_json,
)
from cluster.requests import ClassifyResult, ExamplesRequest, ModelSpec, RegressResult
from cluster.types import VersionRequest
from protos.tensorflow.core.example import example_pb2, feature_pb2

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


@text_checked
def examples_request(
    body: bytes, name: str, version: VersionRequest, deadline: float | None = None
) -> ExamplesRequest:
    """`{"signature_name"?, "context"?, "examples": [...]}` as serialized tf.Examples (spec §8.7).

    A context is serialized once and travels once, as for gRPC's `example_list_with_context`: the
    replica merges it into each example as it parses them, example features winning.
    """
    document = request_object(body)
    signature_name = body_signature_name(document)
    if "examples" not in document:
        raise InvalidArgument("Invalid request: key 'examples' is expected and was not found")
    examples = document["examples"]
    if not isinstance(examples, list) or not examples:
        raise InvalidArgument("'examples' must be a non-empty JSON array of objects")
    context = b""
    if "context" in document:
        context = _example(document["context"], "'context'").SerializeToString()
    serialized = [_example(example, f"item {i} of 'examples'").SerializeToString() for i, example in enumerate(examples)]
    return ExamplesRequest(ModelSpec(name, version, signature_name), serialized, deadline, context)


def _example(features: Any, where: str) -> example_pb2.Example:
    if not isinstance(features, dict):
        raise InvalidArgument(f"Expecting a JSON object of features at {where}")
    example = example_pb2.Example()
    feature_map = example.features.feature
    for key, value in features.items():
        _fill_feature(feature_map[key], value, key)
    return example


def _fill_feature(target: feature_pb2.Feature, value: Any, key: str) -> None:
    """Typing per element (spec §8.7); all elements of one feature must land in the same list."""
    items = value if isinstance(value, list) else [value]
    kinds = set()
    for item in items:
        if isinstance(item, bool):
            kinds.add("int64")
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                raise InvalidArgument(f"Feature '{key}': {item} does not fit int64")
            kinds.add("int64")
        elif isinstance(item, float):
            kinds.add("float")
        elif isinstance(item, (str, bytes)):
            kinds.add("bytes")
        else:
            what = "null" if item is None else "a nested array" if isinstance(item, list) else "an object"
            raise InvalidArgument(f"Feature '{key}': {what} is not a feature value")
    if len(kinds) > 1:
        raise InvalidArgument(f"Feature '{key}' mixes value types: {sorted(kinds)}")
    kind = kinds.pop() if kinds else None  # an empty list: a feature with no values
    if kind == "float":
        target.float_list.value.extend(items)
    elif kind == "int64":
        target.int64_list.value.extend(int(item) for item in items)
    elif kind == "bytes":
        target.bytes_list.value.extend(item.encode() if isinstance(item, str) else item for item in items)


def classify_response(result: ClassifyResult) -> bytes:
    """`{"results": [[[label, score], ...], ...]}`: one list per example, a pair per class."""
    labels, scores = result.labels, result.scores  # shapes checked when the result was made
    reference = labels if labels is not None else scores
    if reference is None or np.size(reference) == 0:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    rows, k = reference.shape
    label_rows = to_json("classes", labels) if labels is not None else [[""] * k] * rows
    score_rows = shortest_floats(scores).tolist() if scores is not None else [[0.0] * k] * rows
    results = [[list(pair) for pair in zip(ls, ss, strict=True)] for ls, ss in zip(label_rows, score_rows, strict=True)]
    return dumps({"results": results})


def regress_response(result: RegressResult) -> bytes:
    """`{"results": [v1, v2, ...]}` from values [n] or [n, 1] (checked when the result was made)."""
    values = np.asarray(result.values)
    if values.size == 0:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return dumps({"results": shortest_floats(values.ravel()).tolist()})
