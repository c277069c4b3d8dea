"""The domain results of `cluster.requests` -> TF Serving's gRPC response messages.

The results arrive checked (a ClassifyResult's shapes are checked when it is made): nothing here
checks them again. Big Predict answers are written by hand instead (`predict_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np

from cluster.errors import Internal
from cluster.gateway.converters.requests import SIGNATURE_DEF_FIELD
from cluster.gateway.status import code_for_kind, tf_error_code, truncate
from cluster.requests import (
    ClassifyResult,
    ModelMetadata,
    PredictResult,
    RegressResult,
    ResolvedSpec,
)
from cluster.types import VersionStatus
from exporter.errors import InvalidInputError
from exporter.signature import Signature, TensorInfo
from exporter.tensor_encode import array_to_proto
from protos.tensorflow.core.framework import types_pb2
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)


def fill_spec(target: model_pb2.ModelSpec, spec: ResolvedSpec, *, with_signature: bool = True) -> None:
    target.name = spec.name
    target.version.value = spec.version
    if with_signature:
        target.signature_name = spec.signature_key


def predict_response(result: PredictResult, *, tensor_content: bool = False) -> predict_pb2.PredictResponse:
    """Outputs in the typed `*_val` fields (TF's default) or, if asked, in `tensor_content`."""
    response = predict_pb2.PredictResponse()
    for alias, array in result.outputs.items():
        try:
            array_to_proto(array, response.outputs[alias], use_tensor_content=tensor_content)
        except InvalidInputError as exc:
            raise Internal(f"cannot encode output {alias}: {exc}") from exc
    fill_spec(response.model_spec, result.spec)
    return response


def classification_result(result: ClassifyResult, target: classification_pb2.ClassificationResult) -> None:
    """Fills `target` with one Classifications per example from labels and/or scores [n, k] (their
    shapes were checked when the result was made)."""
    labels, scores = result.labels, result.scores
    reference = labels if labels is not None else scores
    assert reference is not None  # ClassifyResult refuses neither
    rows, k = reference.shape
    count = rows * k
    label_list = [_text(v) for v in labels.ravel().tolist()] if labels is not None else [""] * count
    score_list = (
        np.asarray(scores, dtype=np.float32).ravel().tolist() if scores is not None else [0.0] * count
    )
    # One message per class is what the wire needs; everything else above is done in bulk.
    # `add(**fields)` builds each in C, about twice as fast as constructing and extending.
    for row in range(rows):
        add = target.classifications.add().classes.add
        for j in range(row * k, row * k + k):
            add(label=label_list[j], score=score_list[j])


def _text(value: Any) -> str:
    # Class.label is a proto `string`: bytes that are not UTF-8 cannot be sent as they are.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def regression_result(result: RegressResult, target: regression_pb2.RegressionResult) -> None:
    """Fills `target` with one Regression per example from values [n] or [n, 1] (checked when the
    result was made)."""
    add = target.regressions.add
    for value in np.asarray(result.values).astype(np.float32).ravel().tolist():
        add(value=value)


def classification_response(result: ClassifyResult) -> classification_pb2.ClassificationResponse:
    response = classification_pb2.ClassificationResponse()
    classification_result(result, response.result)
    fill_spec(response.model_spec, result.spec)
    return response


def regression_response(result: RegressResult) -> regression_pb2.RegressionResponse:
    response = regression_pb2.RegressionResponse()
    regression_result(result, response.result)
    fill_spec(response.model_spec, result.spec)
    return response


def multi_inference_response(
    results: Iterable[ClassifyResult | RegressResult],
) -> inference_pb2.MultiInferenceResponse:
    """One InferenceResult per task, in task order, each with its own model_spec."""
    response = inference_pb2.MultiInferenceResponse()
    for result in results:
        entry = response.results.add()
        fill_spec(entry.model_spec, result.spec)
        if isinstance(result, ClassifyResult):
            classification_result(result, entry.classification_result)
        else:
            regression_result(result, entry.regression_result)
    return response


def _tensor_info(info: TensorInfo, target: meta_graph_pb2.TensorInfo) -> None:
    target.name = info.name
    target.dtype = cast(types_pb2.DataType, info.dtype)  # proto3 enums are open: any number
    if info.shape is None:
        target.tensor_shape.unknown_rank = True
        return
    target.tensor_shape.SetInParent()  # a scalar still has a (dimensionless) shape
    for size in info.shape:
        target.tensor_shape.dim.add().size = -1 if size is None else int(size)


def signature_def_map(signatures: Mapping[str, Signature]) -> get_model_metadata_pb2.SignatureDefMap:
    """Every signature of a version as TF's SignatureDefMap (unknown dims are -1)."""
    result = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signatures.items():
        target = result.signature_def[key]
        target.method_name = signature.method_name
        for alias, info in signature.inputs.items():
            _tensor_info(info, target.inputs[alias])
        for alias, info in signature.outputs.items():
            _tensor_info(info, target.outputs[alias])
    return result


def metadata_response(metadata: ModelMetadata) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """model_spec {name, version} (no signature) and the Any-packed SignatureDefMap (spec §7.4)."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    fill_spec(response.model_spec, metadata.spec, with_signature=False)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(metadata.signatures))
    return response


def status_response(statuses: Iterable[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    """Versions by descending number, each with its state and a StatusProto (message only on error)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in sorted(statuses, key=lambda s: s.version, reverse=True):
        entry = response.model_version_status.add(version=status.version, state=int(status.state))
        entry.status.SetInParent()  # TF always sets it, OK included
        if status.error_kind is not None or status.error_message is not None:
            # An error without a kind is not one of ours: INTERNAL, like any unexpected exception.
            entry.status.error_code = cast(error_codes_pb2.Code, tf_error_code(code_for_kind(status.error_kind or "")))
            entry.status.error_message = truncate(status.error_message or "")
    return response


def reload_response() -> model_management_pb2.ReloadConfigResponse:
    """The reply to a successful reload (failures are gRPC errors: spec §7.6)."""
    response = model_management_pb2.ReloadConfigResponse()
    response.status.error_code = error_codes_pb2.OK
    response.status.SetInParent()
    return response
