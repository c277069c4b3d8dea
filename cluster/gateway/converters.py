"""TF Serving's gRPC messages <-> the domain requests and results of `cluster.requests`.

With `config_converters` and `predict_bytes` (big Predict responses written by hand), the only code
that knows proto field names. Validation here is what TF Serving does before it looks a servable up
(a missing or nameless ModelSpec, empty input, undecodable tensors), with TF's messages; everything
that needs the model is the service's job.

Classify, Regress and MultiInference requests arrive as raw bytes: the examples are never decoded
in the gateway. Like TF Serving's `SerializedInput`, the request's `input` field is parsed as a
wire-compatible message whose Examples are declared as `bytes` (spec §4.3), so each Example stays
the serialized bytes the replica parses once, in its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

import numpy as np
from google.protobuf import empty_pb2, unknown_fields
from google.protobuf.message import DecodeError, Message

from cluster.config import DEFAULT_MAX_REQUEST_FILL_BYTES
from cluster.errors import Internal, InvalidArgument
from cluster.gateway.status import code_for_kind, tf_error_code, truncate
from cluster.requests import (
    ClassifyResult,
    ExamplesRequest,
    InferenceTask,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    PredictResult,
    RegressResult,
    ResolvedSpec,
)
from cluster.routing.validation import check_claimed_tensors, check_input_aliases
from cluster.types import VersionRequest, VersionStatus
from exporter import protobuf_wire
from exporter.errors import InvalidInputError
from exporter.signature import Signature, TensorInfo
from exporter.tensor_codec import Lifted, TensorLayout, array_to_proto, decode_tensor, tensor_layout
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
from protos.tensorflow_serving.apis.internal import serialized_input_pb2

SIGNATURE_DEF_FIELD = "signature_def"
# What TF's fill may add to one request's tensors (`tessera serve --max_request_fill_bytes`).
DEFAULT_MAX_FILL_BYTES: Final = DEFAULT_MAX_REQUEST_FILL_BYTES
M = TypeVar("M", bound=Message)


# ---------------------------------------------------------------------------------------------
# Requests


def model_spec(spec: model_pb2.ModelSpec) -> ModelSpec:
    """A ModelSpec message as the domain's; an empty name is refused as TF Serving does."""
    if not spec.name:
        raise InvalidArgument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        version = VersionRequest.specific(spec.version.value)
    elif choice == "version_label":
        version = VersionRequest.labelled(spec.version_label)
    else:
        version = VersionRequest.latest()
    return ModelSpec(spec.name, version, spec.signature_name)


def _required_spec(request: Any) -> ModelSpec:
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    return model_spec(request.model_spec)


def predict_spec(request: predict_pb2.PredictRequest) -> ModelSpec:
    """The ModelSpec of a PredictRequest (refused if missing or nameless, as TF Serving does)."""
    return _required_spec(request)


def predict_request(
    request: predict_pb2.PredictRequest,
    deadline: float | None = None,
    *,
    signature: Signature | None = None,
    max_fill_bytes: int = DEFAULT_MAX_FILL_BYTES,
    check: Callable[[], None] | None = None,
    lifted: Mapping[str, Lifted] | None = None,
) -> PredictRequest:
    """A PredictRequest with its tensors decoded (zero-copy views for `tensor_content` and for the
    payloads `lifted` out of a big request by `predict_bytes.parse_predict_request`).

    Nothing is allocated before the request is checked: with the `signature` of the version it
    resolves to, the input aliases, then each tensor's header (the "tensor parsing error"s), then
    dtypes and shapes; and, with or without it, what TF's fill would add (the elements a tensor
    claims but does not carry) against `max_fill_bytes`. `check` is called between tensors (and
    inside long string lists); it raises to abort a conversion that is no longer wanted.
    """
    spec = _required_spec(request)
    protos = request.inputs
    if signature is not None:
        check_input_aliases(signature, protos.keys())
    lifted = lifted or {}
    layouts = {alias: _layout(alias, proto, lifted.get(alias)) for alias, proto in protos.items()}
    if signature is not None:
        claimed = {alias: (layout.numpy_dtype, layout.shape) for alias, layout in layouts.items()}
        check_claimed_tensors(signature, claimed)
    fill = sum(layout.fill_bytes for layout in layouts.values())
    if fill > max_fill_bytes:
        raise InvalidArgument(
            f"the request's tensors claim {fill} bytes more than the values they carry (TF fills "
            f"missing values with zeros or the last value); the limit is {max_fill_bytes} bytes per "
            "request (--max_request_fill_bytes)"
        )
    inputs = {}
    for alias, proto in protos.items():
        if check is not None:
            check()
        inputs[alias] = decode_tensor(proto, layouts[alias], check)
    return PredictRequest(spec, inputs, tuple(request.output_filter), deadline, checked=signature)


def _layout(alias: str, proto: Any, lifted: Lifted | None) -> TensorLayout:
    try:
        return tensor_layout(proto, lifted=lifted)
    except (InvalidInputError, ValueError) as exc:
        raise InvalidArgument(f"tensor parsing error: {alias}") from exc


def parse(message_type: type[M], raw: bytes) -> M:
    """A gRPC request's bytes as `message_type`; an undecodable message is INVALID_ARGUMENT."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(f"Could not parse the request as {message_type.DESCRIPTOR.name}: {exc}") from None


def examples_request(
    request: bytes | classification_pb2.ClassificationRequest | regression_pb2.RegressionRequest,
    deadline: float | None = None,
) -> ExamplesRequest:
    """A Classify or Regress request (wire bytes, or a message, which is serialized first).

    Both messages are `{1: model_spec, 2: input}` on the wire.
    """
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    fields = _top_level_fields(raw)
    if 1 not in fields:
        raise InvalidArgument("Missing ModelSpec")
    spec = model_spec(_merged(model_pb2.ModelSpec, fields[1]))
    examples, context = _serialized_examples(fields.get(2, ()))
    return ExamplesRequest(spec, examples, deadline, context)


def multi_inference_request(
    request: bytes | inference_pb2.MultiInferenceRequest, deadline: float | None = None
) -> MultiInferenceRequest:
    """A MultiInference request (`{1: repeated tasks, 2: input}`); the service validates the tasks."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    fields = _top_level_fields(raw)
    tasks = [_merged(inference_pb2.InferenceTask, [chunk]) for chunk in fields.get(1, ())]
    if not tasks:
        raise InvalidArgument("ModelSpec has no name specified.")
    domain_tasks = [InferenceTask(model_spec(task.model_spec), task.method_name) for task in tasks]
    examples, context = _serialized_examples(fields.get(2, ()))
    return MultiInferenceRequest(domain_tasks, examples, deadline, context)


def metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> ModelSpec:
    """The spec a GetModelMetadata asks about, after TF's checks of `metadata_field` (spec §7.4)."""
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    if not request.metadata_field:
        raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
    for name in request.metadata_field:
        if name != SIGNATURE_DEF_FIELD:
            raise InvalidArgument(f"Metadata field {name} is not supported")
    return model_spec(request.model_spec)


def status_request(request: get_model_status_pb2.GetModelStatusRequest) -> tuple[str, int | None]:
    """(model name, version or None for all versions); a version label is ignored, as in TF."""
    spec = _required_spec(request)
    return spec.name, spec.version.version


def _top_level_fields(raw: bytes) -> dict[int, list[bytes]]:
    """The length-delimited top-level fields of a message, by number, without decoding them.

    Parsing into `Empty` keeps every field as an unknown field, i.e. as bytes.
    """
    try:
        holder = empty_pb2.Empty.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument(f"Could not parse the request: {exc}") from exc
    fields: dict[int, list[bytes]] = {}
    # types-protobuf's UnknownFieldSet stub lacks __iter__; the class iterates its fields.
    for field in unknown_fields.UnknownFieldSet(holder):  # type: ignore[attr-defined]
        # Other wire types under our numbers are what a generated parser skips as unknown, too.
        if field.wire_type == protobuf_wire.LENGTH_DELIMITED:
            fields.setdefault(field.field_number, []).append(field.data)
    return fields


def _merged(message_type: Any, chunks: Sequence[bytes]) -> Any:
    # A message field sent more than once merges: parsing the concatenation does exactly that.
    try:
        return message_type.FromString(b"".join(chunks))
    except DecodeError as exc:
        raise InvalidArgument(f"Could not parse {message_type.DESCRIPTOR.name}: {exc}") from exc


_EXAMPLES_CHUNK: Final = 1 << 15


def _listed(items: Sequence[bytes]) -> list[bytes]:
    """A repeated bytes field as a list, in chunks: list() of a million examples is one C call that
    holds the GIL for a while, which a worker thread must not do to the event loop's thread."""
    out: list[bytes] = []
    for start in range(0, len(items), _EXAMPLES_CHUNK):
        out.extend(items[start : start + _EXAMPLES_CHUNK])
    return out


def _serialized_examples(chunks: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """The Examples of an `Input` as bytes, and the serialized context they share (b"": none).

    The context is not copied onto each example here: it travels once (see ExamplesRequest).
    """
    serialized = _merged(serialized_input_pb2.SerializedInput, chunks)
    kind = serialized.WhichOneof("kind")
    context = b""
    if kind == "example_list":
        examples = _listed(serialized.example_list.examples)
    elif kind == "example_list_with_context":
        with_context = serialized.example_list_with_context
        examples = _listed(with_context.examples)
        context = with_context.context
    else:
        examples = []
    if not examples:
        raise InvalidArgument("Input is empty.")
    return examples, context


# ---------------------------------------------------------------------------------------------
# Results


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
