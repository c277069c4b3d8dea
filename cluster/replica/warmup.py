"""Warmup: TF Serving's `assets.extra/tf_serving_warmup_requests` replayed on a just-loaded servable.

Each record runs as the request it holds would: Predict feeds by alias; Classify, Regress and
MultiInference feed their tf.Examples to the signature's one DT_STRING input, found by the same
check the gateway applies to live requests (not by a literal alias). Any failure fails the load.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from cluster import errors
from cluster.routing.validation import check_classify_signature, check_regress_signature
from exporter import tensor_codec
from exporter.example_parser import with_context
from exporter.servable import Servable
from exporter.signature import (
    CLASSIFY_METHOD,
    DEFAULT_SERVING_SIGNATURE,
    REGRESS_METHOD,
    Tensors,
    check_feeds,
)
from exporter.warmup import WARMUP_FILE, read_warmup

__all__ = ["WARMUP_FILE", "replay_warmup", "serialized_examples"]


def replay_warmup(servable: Servable, path: pathlib.Path, iterations: int = 1) -> int:
    """Replays a warmup file against `servable`; returns the number of records.

    Only each record's request is used; model_spec.name/version are ignored, signature_name is not
    (spec §11).
    """
    logs = read_warmup(path)
    for _ in range(max(iterations, 1)):
        for record in logs:
            kind = record.WhichOneof("log_type")
            if kind == "predict_log":
                predict = record.predict_log.request
                feeds = {alias: tensor_codec.proto_to_array(t) for alias, t in predict.inputs.items()}
                key = predict.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
                _check(servable, key, feeds)
                servable.run(key, feeds, list(predict.output_filter) or None)
            elif kind == "classify_log" or kind == "regress_log":
                examples_request = (
                    record.classify_log.request if kind == "classify_log" else record.regress_log.request
                )
                key = examples_request.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
                method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
                _run_examples(servable, key, method, serialized_examples(examples_request.input))
            elif kind == "multi_inference_log":
                multi = record.multi_inference_log.request
                examples = serialized_examples(multi.input)
                for task in multi.tasks:
                    key = task.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
                    _run_examples(servable, key, task.method_name, examples)
            else:
                raise errors.Unimplemented(f"Unsupported log_type for warmup: {kind}")
    return len(logs)


def _run_examples(servable: Servable, key: str, method: str, examples: np.ndarray) -> None:
    signature = servable.signatures.get(key)
    if signature is None:
        raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
    if method == CLASSIFY_METHOD:
        alias = check_classify_signature(signature)
    elif method == REGRESS_METHOD:
        alias = check_regress_signature(signature)
    else:
        raise errors.InvalidArgument(f"Unsupported signature method_name: {method}")
    _check(servable, key, {alias: examples})
    servable.run(key, {alias: examples})


def _check(servable: Servable, key: str, feeds: Tensors) -> None:
    """A warmup record is a request like any other: checked where it enters, as the replica checks
    a live one (the servable trusts its feeds)."""
    signature = servable.signatures.get(key)
    if signature is not None:  # an unknown key: the servable's run names it, as it always did
        check_feeds(signature, feeds)


def serialized_examples(serialized_input: Any) -> np.ndarray:
    """A SerializedInput as the DT_STRING vector fed to a classify/regress graph (spec §4.3).

    A shared context reaches the parser as live requests' does (`with_context`: merged as each
    example is parsed, never copied onto it), so warmup runs exactly what serving will.
    """
    kind = serialized_input.WhichOneof("kind")
    if kind == "example_list_with_context":
        ctx = serialized_input.example_list_with_context
        if not ctx.examples:
            raise errors.InvalidArgument("Input is empty.")
        return with_context(ctx.context, list(ctx.examples))
    items = list(serialized_input.example_list.examples) if kind == "example_list" else []
    if not items:
        raise errors.InvalidArgument("Input is empty.")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
