"""Serving input receivers: the part of the graph that accepts inference requests.

A receiver function takes the GraphBuilder and returns a ServingInputReceiver: the tensors the
request feeds (`receiver_tensors`, keyed by signature input alias) and the features the model is
built on. As with TF Estimators, export builds the receiver first, then the model on its features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import ExportError
from exporter.graph import GraphBuilder, Tensor
from exporter.signature import Shape


@dataclass(frozen=True)
class ServingInputReceiver:
    """features: what the model consumes (Tensor or SparseTensor); receiver_tensors: what is fed."""

    features: Mapping[str, Any]
    receiver_tensors: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        if not self.receiver_tensors:
            raise ExportError("a receiver needs at least one receiver tensor")


ReceiverFn = Callable[[GraphBuilder], ServingInputReceiver]


def build_parsing_serving_input_receiver_fn(
    feature_spec: Mapping[str, Any], receiver_key: str = "examples"
) -> ReceiverFn:
    """One DT_STRING vector of serialized tf.Examples, parsed in the graph with `feature_spec`.

    Its signatures take the serialized examples as `inputs` (Classify/Regress) or as
    `receiver_key` (Predict).
    """
    from exporter.ops.parsing import parse_example

    def receiver_fn(g: GraphBuilder) -> ServingInputReceiver:
        serialized = g.placeholder(dtypes.STRING, (None,), name="input_example_tensor")
        features = parse_example(serialized, feature_spec)
        return ServingInputReceiver(features=features, receiver_tensors={receiver_key: serialized})

    return receiver_fn


def build_raw_serving_input_receiver_fn(features: Mapping[str, tuple[DType, Shape]]) -> ReceiverFn:
    """Placeholders fed directly: name -> (dtype, shape with None for the batch dim)."""

    def receiver_fn(g: GraphBuilder) -> ServingInputReceiver:
        placeholders = {name: g.placeholder(dtype, shape, name=name) for name, (dtype, shape) in features.items()}
        return ServingInputReceiver(features=placeholders, receiver_tensors=placeholders)

    return receiver_fn
