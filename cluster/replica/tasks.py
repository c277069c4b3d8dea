"""MultiInference on a replica: several signatures of one servable run on one parse of the examples.

A MultiInference request names tasks (Classify or Regress signatures of one model version) over one
list of tf.Examples. The gateway sends the examples once (a call whose target is the tuple of the
tasks' signature keys, `cluster.replica.contract.Tasks`); here they are parsed once per distinct
feature spec: tasks whose signatures' parsing receivers have the same spec share one parse, and
each signature then runs from the parsed features (`ParsesExamples.run_features`), the same
outputs as a run on the serialized Examples. A signature whose receiver the servable cannot bypass
(or a servable that is no `ParsesExamples`) runs on the serialized Examples as a Classify would.

What can be decided without the examples (each task's signature, which tasks share a parse) is a
`TasksPlan`. A `TaskPlanner` (one per servable version, kept by the replica) checks each signature
key once and keeps its parser, so what it holds is bounded by the servable's signatures, whatever
task lists clients send; a request's plan is then only a lookup per task.

Every task's signature has one DT_STRING input (the gateway checks it; so does `check_tasks`, for
what reaches a replica another way). A task that fails fails the request: an InvalidInputError
for bad examples (the replica answers InvalidArgument), as TF Serving's one Session::Run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster import errors
from cluster.replica.contract import Tasks, task_output
from cluster.requests import EXAMPLE_CONTEXT_FEED
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.example_parser import ExampleParser
from exporter.servable import ParsesExamples, Servable
from exporter.signature import Signature, Tensors, check_feeds


@dataclass(frozen=True)
class TasksPlan:
    """Per task, its signature and the parser of its receiver's spec: the same `ExampleParser`
    object for every task of one spec, None where the task runs on the serialized Examples."""

    signatures: tuple[Signature, ...]
    parsers: tuple[ExampleParser | None, ...]


class TaskPlanner:
    """The tasks of one servable: each signature key checked (it must exist and take one vector of
    serialized Examples) and given its parser once; keys whose receivers have the same feature
    spec share one `ExampleParser`, so their tasks share a parse."""

    def __init__(self, servable: Servable) -> None:
        self._servable = servable
        self._bypass = servable if isinstance(servable, ParsesExamples) else None
        self._by_key: dict[str, tuple[Signature, ExampleParser | None]] = {}

    def plan(self, keys: Tasks) -> TasksPlan:
        """The plan of one request's tasks, in their order. Raises InvalidArgument for no task
        or a signature that does not take examples, FailedPrecondition for an unknown key."""
        if not keys:
            raise errors.InvalidArgument("MultiInferenceRequest must contain at least one task")
        planned = [self._task(key) for key in keys]
        return TasksPlan(tuple(sig for sig, _ in planned), tuple(parser for _, parser in planned))

    def _task(self, key: str) -> tuple[Signature, ExampleParser | None]:
        known = self._by_key.get(key)
        if known is not None:
            return known
        signature = self._servable.signatures.get(key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
        inputs = list(signature.inputs.values())
        if len(inputs) != 1 or inputs[0].dtype != dtypes.STRING:
            raise errors.InvalidArgument(f"signature {key!r} does not take one string Tensor of tf.Examples")
        spec = self._bypass.example_features(key) if self._bypass is not None else None
        parser = None
        if spec is not None:
            shared = (p for _, p in self._by_key.values() if p is not None and p.spec == spec)
            parser = next(shared, None) or ExampleParser(spec)
        task = self._by_key[key] = (signature, parser)
        return task


def examples_of(feeds: Tensors) -> np.ndarray:
    """The one vector of serialized Examples a MultiInference request carries (its context, if
    any, already attached by the replica host)."""
    columns = [column for alias, column in feeds.items() if alias != EXAMPLE_CONTEXT_FEED]
    if len(columns) != 1:
        raise errors.InvalidArgument("a MultiInference call carries one vector of examples")
    return columns[0]


def run_tasks(servable: Servable, plan: TasksPlan, examples: np.ndarray) -> Tensors:
    """Runs every task's signature on `examples`, parsed once per distinct feature spec; returns
    their outputs keyed `task_output(index, alias)`. Raises what `Servable.run` raises."""
    parsed: dict[int, dict[str, object]] = {}  # id(parser) -> the features it parsed
    outputs: dict[str, np.ndarray] = {}
    for index, (signature, parser) in enumerate(zip(plan.signatures, plan.parsers, strict=True)):
        ((alias, _),) = signature.inputs.items()
        feeds = {alias: examples}
        try:
            check_feeds(signature, feeds)
        except InvalidInputError as e:
            raise errors.InvalidArgument(str(e)) from None
        if parser is None:
            result = servable.run(signature.key, feeds)
        else:
            assert isinstance(servable, ParsesExamples)  # a parser is planned only for one
            features = parsed.get(id(parser))
            if features is None:
                features = parsed[id(parser)] = dict(parser(examples))
            result = servable.run_features(signature.key, features)
        for name, array in result.items():
            outputs[task_output(index, name)] = array
    return outputs
