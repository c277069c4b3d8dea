"""The ParseExample op: a batch of serialized tf.Examples -> dense and sparse feature tensors.

Input: one DT_STRING tensor [batch] of serialized `tensorflow.Example`s.
Attributes: the feature spec, encoded by `exporter.feature_attrs.spec_to_attrs`.
Outputs, in `exporter.features.output_layout` order: feature names sorted; a FixedLenFeature gives
one dense tensor [batch, *shape]; a VarLenFeature or SparseFeature gives three tensors: indices
int64 [n, 2], values [n], dense_shape int64 [2].

The spec is decoded once at load (`prepare`); each run is its `exporter.example_parser.ExampleParser`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError
from exporter.example_parser import ExampleParser
from exporter.feature_attrs import spec_from_attrs, spec_to_attrs
from exporter.features import FeatureSpec, FixedLenFeature, SparseTensor, output_layout
from exporter.ops.registry import LoadContext, TensorType, register_op

if TYPE_CHECKING:
    from exporter.graph import Tensor


def _infer_parse_example(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (serialized,) = inputs
    if serialized.dtype != dtypes.STRING:
        raise GraphError(
            f"ParseExample takes serialized Examples (string), got {dtypes.name(serialized.dtype)}"
        )
    if serialized.rank not in (None, 1):
        raise GraphError(f"ParseExample takes a vector [batch] of Examples, got shape {serialized.shape}")
    batch = serialized.shape[0] if serialized.shape is not None else None
    spec = spec_from_attrs(attrs)
    out: list[TensorType] = []
    for key, part in output_layout(spec):
        feature = spec[key]
        if part == "dense":
            assert isinstance(feature, FixedLenFeature)
            out.append(TensorType(feature.dtype, (batch, *feature.shape)))
        elif part == "indices":
            out.append(TensorType(dtypes.INT64, (None, 2)))
        elif part == "values":
            out.append(TensorType(feature.dtype, (None,)))
        else:
            out.append(TensorType(dtypes.INT64, (2,)))
    return out


def _prepare_parse_example(attrs: Mapping[str, Any], ctx: LoadContext) -> ExampleParser:
    return ExampleParser(spec_from_attrs(attrs))


@register_op("ParseExample", infer=_infer_parse_example, num_inputs=1, prepare=_prepare_parse_example)
def _parse_example(inputs: list[np.ndarray], parser: ExampleParser) -> list[np.ndarray]:
    parsed = parser(inputs[0])
    out: list[np.ndarray] = []
    for key in sorted(parsed):  # the order of output_layout: sorted names, sparse parts in order
        value = parsed[key]
        out.extend([value] if isinstance(value, np.ndarray) else list(value))
    return out


def parse_example(
    serialized: Tensor, spec: Mapping[str, FeatureSpec], name: str | None = None
) -> dict[str, Tensor | SparseTensor]:
    """Adds a ParseExample node on `serialized` (string [batch]); returns each feature's tensor(s)."""
    outputs = serialized.graph.apply("ParseExample", [serialized], spec_to_attrs(spec), name=name)
    result: dict[str, Tensor | SparseTensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    for (key, part), tensor in zip(output_layout(spec), outputs, strict=True):
        if part == "dense":
            result[key] = tensor
        else:
            parts.setdefault(key, {})[part] = tensor
    for key, p in parts.items():
        result[key] = SparseTensor(p["indices"], p["values"], p["dense_shape"])
    return {key: result[key] for key in sorted(result)}
