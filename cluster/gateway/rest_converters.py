"""TF Serving's REST bodies <-> the domain requests and results of `cluster.requests` (spec §8.4-8.7).

The only REST code that knows the JSON shapes; `rest_server` handles URLs and HTTP, `rest_json`
turns JSON values into typed arrays and back. Predict is two steps because TF types the JSON by
the signature: `predict_body` checks the top level, then `predict_request` types the tensors with
the signature of the version the server resolved (from `ServingAPI.model_metadata`).
Classify/Regress bodies are `rest_examples`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from cluster.errors import FailedPrecondition, InvalidArgument
from cluster.gateway import converters
from cluster.gateway.rest_json import (
    body_signature_name,
    dumps,
    request_object,
    text_checked,
    to_array,
    to_json,
)
from cluster.requests import (
    ModelMetadata,
    ModelSpec,
    PredictRequest,
    PredictResult,
)
from cluster.types import VersionRequest, VersionStatus
from exporter.signature import Signature
from protos.tensorflow_serving.apis import model_pb2


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (a Python class name means nothing to a client)."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str | bytes):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


# ---------------------------------------------------------------------------------------------
# Predict


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A parsed Predict body: row (`instances`) or columnar (`inputs`), before the signature is known."""

    signature_name: str
    row_format: bool
    payload: Any


def predict_body(body: bytes) -> PredictBody:
    """Checks the top level of a Predict body (spec §8.5); tensors wait for the signature's dtypes."""
    document = request_object(body)
    signature_name = body_signature_name(document)
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise InvalidArgument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys exclusively")
    if not (has_instances or has_inputs):
        raise InvalidArgument("Missing 'inputs' or 'instances' key")
    key = "instances" if has_instances else "inputs"
    return PredictBody(signature_name, has_instances, document[key])


@text_checked
def predict_request(
    body: PredictBody, name: str, metadata: ModelMetadata, deadline: float | None = None
) -> PredictRequest:
    """The domain request for the version `metadata` describes, inputs typed by its signature.

    The spec names that exact version, so the tensors match the signature they were typed by even
    if a newer version becomes the latest meanwhile.
    """
    spec = ModelSpec(name, VersionRequest.specific(metadata.spec.version), body.signature_name)
    signature = metadata.signatures.get(spec.signature_key)
    if signature is None:
        raise FailedPrecondition(f'Serving signature key "{spec.signature_key}" not found.')
    inputs = _rows(body.payload, signature) if body.row_format else _columns(body.payload, signature)
    return PredictRequest(spec, inputs, (), deadline)


def predict_conversion(
    body: bytes, name: str, metadata: ModelMetadata, deadline: float | None = None
) -> tuple[PredictRequest, bool]:
    """`predict_body` then `predict_request` in one call (one trip to the conversion process);
    returns the request and whether the body was in the row format."""
    parsed = predict_body(body)
    return predict_request(parsed, name, metadata, deadline), parsed.row_format


def _rows(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty JSON array")
    names = list(signature.inputs)
    if isinstance(instances[0], dict):
        expected = set(names)
        for i, row in enumerate(instances):
            if not isinstance(row, dict) or row.keys() != expected:
                got = sorted(row) if isinstance(row, dict) else _json_kind(row)
                raise InvalidArgument(
                    f"Expecting object with keys {sorted(expected)} at item {i} of 'instances', got {got}"
                )
        columns = {n: [row[n] for row in instances] for n in names}
    elif len(names) == 1:
        columns = {names[0]: instances}
    else:
        raise InvalidArgument(
            f"Expecting object at item 0 of 'instances': the signature has several inputs {sorted(names)}"
        )
    return {n: to_array(v, signature.inputs[n].dtype, n, rows=True) for n, v in columns.items()}


def _columns(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = list(signature.inputs)
    if isinstance(inputs, dict):
        for n in names:
            if n not in inputs:
                raise InvalidArgument(f"Missing named input: {n} in 'inputs' object.")
        columns = {n: inputs[n] for n in names}  # other keys are ignored, as in TF
    elif len(names) == 1:
        columns = {names[0]: inputs}
    else:
        raise InvalidArgument(
            f"'inputs' must be an object keyed by the signature's inputs {sorted(names)}"
        )
    return {n: to_array(v, signature.inputs[n].dtype, n) for n, v in columns.items()}


def predict_response(result: PredictResult, row_format: bool) -> bytes:
    """`{"predictions": ...}` for a row request, `{"outputs": ...}` for a columnar one (spec §8.6)."""
    outputs = result.outputs
    if not outputs:
        raise InvalidArgument("Cannot convert an empty output map to JSON")
    if not row_format:
        columns = {alias: to_json(alias, array) for alias, array in outputs.items()}
        value = next(iter(columns.values())) if len(columns) == 1 else columns
        return dumps({"outputs": value})
    batch: int | None = None
    for alias, array in outputs.items():
        if np.ndim(array) == 0:
            raise InvalidArgument(f"Tensor name: {alias} has no shape information")
        if batch is None:
            batch = len(array)
        elif len(array) != batch:
            raise InvalidArgument(f"Tensor name: {alias} has inconsistent batch size: {len(array)} expecting: {batch}")
    rows = {alias: to_json(alias, array) for alias, array in outputs.items()}
    if len(rows) == 1:
        return dumps({"predictions": next(iter(rows.values()))})
    return dumps({"predictions": [{alias: rows[alias][i] for alias in rows} for i in range(batch or 0)]})


# ---------------------------------------------------------------------------------------------
# Status and metadata


def _proto_json(message: Any) -> dict[str, Any]:
    # TF prints these with the proto field names and every default (spec §8.4).
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def status_response(statuses: Iterable[VersionStatus]) -> bytes:
    """`{"model_version_status": [{"version": "3", "state": "AVAILABLE", "status": {...}}, ...]}`."""
    document = _proto_json(converters.status_response(statuses))
    return dumps(document, indent=1)  # TF prints this one with 1-space indentation


def metadata_response(metadata: ModelMetadata) -> bytes:
    """`{"model_spec": {...}, "metadata": {"signature_def": <SignatureDefMap JSON>}}`."""
    spec = model_pb2.ModelSpec(name=metadata.spec.name)
    spec.version.value = metadata.spec.version
    document = {
        "model_spec": _proto_json(spec),
        "metadata": {converters.SIGNATURE_DEF_FIELD: _proto_json(converters.signature_def_map(metadata.signatures))},
    }
    return dumps(document)
