"""MultiInference on a replica: several signatures of one servable run on one parse of the examples.

A MultiInference request names tasks (Classify or Regress signatures of one model version) over one
list of tf.Examples. The gateway sends the examples once (a call whose target is the tuple of the
tasks' signature keys, `cluster.replica.contract.Tasks`); here they are parsed once per distinct
feature spec: tasks whose signatures' parsing receivers have the same spec share one parse, and
each signature then runs from the parsed features (`ParsesExamples.run_features`), the same
outputs as a run on the serialized Examples. A signature whose receiver the servable cannot bypass
(or a servable that is no `ParsesExamples`) runs on the serialized Examples as a Classify would.

Every task's signature has one DT_STRING input (the gateway checks it; so does `check_tasks`, for
what reaches a replica another way). A task that fails fails the request: an InvalidInputError
for bad examples (the replica answers InvalidArgument), as TF Serving's one Session::Run would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cluster import errors
from cluster.replica.contract import Tasks, task_output
from cluster.requests import EXAMPLE_CONTEXT_FEED
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.example_parser import parse_example
from exporter.features import FeatureSpec
from exporter.servable import ParsesExamples, Servable
from exporter.signature import Signature, Tensors, check_feeds


def check_tasks(servable: Servable, keys: Tasks) -> list[Signature]:
    """Each task's signature, which must exist and take one vector of serialized Examples."""
    if not keys:
        raise errors.InvalidArgument("MultiInferenceRequest must contain at least one task")
    signatures = []
    for key in keys:
        signature = servable.signatures.get(key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
        inputs = list(signature.inputs.values())
        if len(inputs) != 1 or inputs[0].dtype != dtypes.STRING:
            raise errors.InvalidArgument(f"signature {key!r} does not take one string Tensor of tf.Examples")
        signatures.append(signature)
    return signatures


def examples_of(feeds: Tensors) -> np.ndarray:
    """The one vector of serialized Examples a MultiInference request carries (its context, if
    any, already attached by the replica host)."""
    columns = [column for alias, column in feeds.items() if alias != EXAMPLE_CONTEXT_FEED]
    if len(columns) != 1:
        raise errors.InvalidArgument("a MultiInference call carries one vector of examples")
    return columns[0]


def run_tasks(servable: Servable, signatures: Sequence[Signature], examples: np.ndarray) -> Tensors:
    """Runs every task's signature on `examples`, parsed once per distinct feature spec; returns
    their outputs keyed `task_output(index, alias)`. Raises what `Servable.run` raises."""
    bypass = servable if isinstance(servable, ParsesExamples) else None
    parsed: list[tuple[Mapping[str, FeatureSpec], Mapping[str, object]]] = []
    outputs: dict[str, np.ndarray] = {}
    for index, signature in enumerate(signatures):
        ((alias, _),) = signature.inputs.items()
        feeds = {alias: examples}
        try:
            check_feeds(signature, feeds)
        except InvalidInputError as e:
            raise errors.InvalidArgument(str(e)) from None
        spec = bypass.example_features(signature.key) if bypass is not None else None
        if bypass is None or spec is None:
            result = servable.run(signature.key, feeds)
        else:
            features = next((f for known, f in parsed if known == spec), None)
            if features is None:
                features = parse_example(examples, spec)
                parsed.append((spec, features))
            result = bypass.run_features(signature.key, features)
        for name, array in result.items():
            outputs[task_output(index, name)] = array
    return outputs
