"""Checks of a request against a signature, and of a signature against its method (spec §7.2–7.3).

Run in the gateway before a request is sent to a replica, so a bad one costs no replica time. Messages follow
TF Serving's wording, since clients and their tests match on them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from cluster import errors
from cluster.requests import ClassifyResult, InferenceTask, RegressResult, ResolvedSpec
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.signature import CLASSIFY_METHOD, REGRESS_METHOD, Claim, Signature, check_claims, check_feeds


def _set(names: Iterable[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def check_input_aliases(signature: Signature, aliases: Collection[str]) -> None:
    """The request's input aliases are exactly the signature's (count first, as TF checks)."""
    expected = signature.inputs
    if len(aliases) != len(expected):
        extra = set(aliases) - set(expected)
        missing = set(expected) - set(aliases)
        raise errors.InvalidArgument(
            f"input size does not match signature: {len(aliases)}!={len(expected)} "
            f"len({_set(aliases)}) != len({_set(expected)}). Sent extra: {_set(extra)}. "
            f"Missing but required: {_set(missing)}."
        )
    for alias in aliases:
        if alias not in expected:
            raise errors.InvalidArgument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {_set(expected)}."
            )


def check_claimed_tensors(signature: Signature, claimed: Mapping[str, Claim]) -> None:
    """Dtypes and shapes as a request claims them (alias -> numpy dtype, shape), before decoding.

    The same checks and messages as on decoded arrays (`check_claims` is `check_feeds` on such pairs).
    """
    try:
        check_claims(signature, claimed)
    except InvalidInputError as e:
        raise errors.InvalidArgument(str(e)) from None


def check_predict_request(
    signature: Signature, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]
) -> None:
    """Input aliases, count, dtypes and shapes; then the output filter."""
    check_input_aliases(signature, inputs.keys())
    try:
        check_feeds(signature, inputs)
    except InvalidInputError as e:
        raise errors.InvalidArgument(str(e)) from None
    check_output_filter(signature, output_filter)


def check_output_filter(signature: Signature, output_filter: Sequence[str]) -> None:
    """Each alias of a Predict's output filter is one of the signature's outputs, named once."""
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise errors.InvalidArgument(f"output tensor alias not found in signature: {alias}")
        if alias in seen:
            raise errors.InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


def _single_string_input(signature: Signature, kind: str) -> str:
    if len(signature.inputs) != 1:
        raise errors.InvalidArgument("Expected one input Tensor.")
    (alias, info), = signature.inputs.items()
    if info.dtype != dtypes.STRING:
        raise errors.InvalidArgument(
            f"{kind} input must be a single string Tensor of serialized tf.Examples; "
            f"signature {signature.key} takes {dtypes.name(info.dtype)}"
        )
    return alias


def check_classify_signature(signature: Signature) -> str:
    """A classify signature has one string input and outputs `classes` and/or `scores`."""
    alias = _single_string_input(signature, "Classification")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise errors.InvalidArgument(
            f"Expected classification signature outputs to contain classes or scores; "
            f"signature {signature.key} has {_set(signature.outputs)}"
        )
    return alias


def check_regress_signature(signature: Signature) -> str:
    """A regress signature has one string input and exactly one output, `outputs`."""
    alias = _single_string_input(signature, "Regression")
    if len(signature.outputs) != 1:
        raise errors.InvalidArgument("Expected one output Tensor.")
    if "outputs" not in signature.outputs:
        raise errors.InvalidArgument(
            f"No regression outputs found in signature {signature.key}: expected an output named outputs"
        )
    return alias


def _same_batch(num_examples: int, rows: int) -> None:
    if rows != num_examples:
        raise errors.InvalidArgument(f"Input batch size did not match output batch size: {num_examples} vs. {rows}")


def classify_result(spec: ResolvedSpec, outputs: Mapping[str, np.ndarray], num_examples: int) -> ClassifyResult:
    """The result of a classify run: its shapes checked as the result is made, then one row per example."""
    result = ClassifyResult(spec, outputs.get("classes"), outputs.get("scores"))
    _same_batch(num_examples, result.rows)
    return result


def regress_result(spec: ResolvedSpec, outputs: Mapping[str, np.ndarray], num_examples: int) -> RegressResult:
    """The result of a regress run, float32 [num_examples], from an output of [n] or [n, 1]."""
    values = RegressResult(spec, outputs["outputs"]).values  # shape checked as a result is made
    _same_batch(num_examples, values.shape[0])
    return RegressResult(spec, values.reshape(-1).astype(np.float32, copy=False))


def multi_inference_methods(tasks: Sequence[InferenceTask]) -> list[str]:
    """'classify' or 'regress' per task, after TF Serving's checks of a MultiInferenceRequest."""
    if not tasks or not tasks[0].spec.name:
        raise errors.InvalidArgument("ModelSpec has no name specified.")
    name = tasks[0].spec.name
    seen: set[str] = set()
    methods = []
    for task in tasks:
        if not task.spec.name:
            raise errors.InvalidArgument("ModelSpec has no name specified.")
        if task.spec.name != name:
            raise errors.InvalidArgument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        key = task.spec.signature_key
        if key in seen:
            raise errors.InvalidArgument(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if task.method == CLASSIFY_METHOD:
            methods.append("classify")
        elif task.method == REGRESS_METHOD:
            methods.append("regress")
        else:
            raise errors.Unimplemented(f"Unsupported signature method_name: {task.method}")
    return methods
