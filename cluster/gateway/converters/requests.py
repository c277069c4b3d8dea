"""TF Serving's gRPC request messages -> the domain requests of `cluster.requests`.

Validation here is what TF Serving does before it looks a servable up (a missing or nameless
ModelSpec, empty input, undecodable tensors), with TF's messages; a Predict's tensors are also
checked against the signature before they are decoded, when the servicer knows it. Classify,
Regress and MultiInference requests stay bytes: like TF Serving's `SerializedInput`, the request's
`input` field is parsed as a wire-compatible message whose Examples are declared as `bytes` (spec
§4.3), so each Example stays the serialized bytes the replica parses once, in its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from google.protobuf import empty_pb2, unknown_fields
from google.protobuf.message import DecodeError, Message

from cluster.config import DEFAULT_MAX_REQUEST_FILL_BYTES
from cluster.errors import InvalidArgument
from cluster.gateway.converters import examples_bytes
from cluster.requests import (
    ExamplesRequest,
    InferenceTask,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
)
from cluster.routing.validation import check_claimed_tensors, check_input_aliases
from cluster.types import VersionRequest
from exporter import protobuf_wire
from exporter.errors import InvalidInputError
from exporter.signature import Claim, Signature
from exporter.tensor_codec import Lifted, TensorLayout, decode_tensor, tensor_layout
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)
from protos.tensorflow_serving.apis.internal import serialized_input_pb2

SIGNATURE_DEF_FIELD = "signature_def"
# What TF's fill may add to one request's tensors (`tessera serve --max_request_fill_bytes`).
DEFAULT_MAX_FILL_BYTES: Final = DEFAULT_MAX_REQUEST_FILL_BYTES
M = TypeVar("M", bound=Message)




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
    if not request.HasField("model_spec"):  # `_required_spec`, one call fewer on every Predict
        raise InvalidArgument("Missing ModelSpec")
    return model_spec(request.model_spec)


def predict_request(
    request: predict_pb2.PredictRequest,
    deadline: float | None = None,
    *,
    signature: Signature | None = None,
    max_fill_bytes: int = DEFAULT_MAX_FILL_BYTES,
    check: Callable[[], None] | None = None,
    lifted: Mapping[str, Lifted] | None = None,
    spec: ModelSpec | None = None,
) -> PredictRequest:
    """A PredictRequest with its tensors decoded (zero-copy views for `tensor_content` and for the
    payloads `lifted` out of a big request by `predict_bytes.parse_predict_request`).

    Nothing is allocated before the request is checked: with the `signature` of the version it
    resolves to, the input aliases, then each tensor's header (the "tensor parsing error"s), then
    dtypes and shapes; and, with or without it, what TF's fill would add (the elements a tensor
    claims but does not carry) against `max_fill_bytes`. `check` is called between tensors (and
    inside long string lists); it raises to abort a conversion that is no longer wanted. `spec`:
    the request's `predict_spec`, when the caller has it already.
    """
    spec = spec if spec is not None else _required_spec(request)
    protos = request.inputs
    if signature is not None:
        check_input_aliases(signature, protos)
    # One pass over the tensors' headers (iterating the map: its items() is a Python-level view).
    layouts: dict[str, TensorLayout] = {}
    claimed: dict[str, Claim] = {}
    fill = 0
    for alias in protos:
        try:
            layout = layouts[alias] = tensor_layout(protos[alias], lifted=lifted.get(alias) if lifted else None)
        except (InvalidInputError, ValueError) as exc:
            raise InvalidArgument(f"tensor parsing error: {alias}") from exc
        claimed[alias] = (layout.numpy_dtype, layout.shape)
        fill += layout.fill_bytes
    if signature is not None:
        check_claimed_tensors(signature, claimed)
    if fill > max_fill_bytes:
        raise InvalidArgument(
            f"the request's tensors claim {fill} bytes more than the values they carry (TF fills "
            f"missing values with zeros or the last value); the limit is {max_fill_bytes} bytes per "
            "request (--max_request_fill_bytes)"
        )
    inputs = {}
    for alias, layout in layouts.items():
        if check is not None:
            check()
        inputs[alias] = decode_tensor(protos[alias], layout, check)
    output_filter = request.output_filter
    return PredictRequest(spec, inputs, tuple(output_filter) if output_filter else (), deadline, checked=signature)


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
    fields, examples = _fields_and_examples(raw)
    if 1 not in fields:
        raise InvalidArgument("Missing ModelSpec")
    spec = model_spec(_merged(model_pb2.ModelSpec, fields[1]))
    listed, context = examples()
    return ExamplesRequest(spec, listed, deadline, context)


def multi_inference_request(
    request: bytes | inference_pb2.MultiInferenceRequest, deadline: float | None = None
) -> MultiInferenceRequest:
    """A MultiInference request (`{1: repeated tasks, 2: input}`); the service validates the tasks."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    fields, examples = _fields_and_examples(raw)
    tasks = [_merged(inference_pb2.InferenceTask, [chunk]) for chunk in fields.get(1, ())]
    if not tasks:
        raise InvalidArgument("ModelSpec has no name specified.")
    domain_tasks = [InferenceTask(model_spec(task.model_spec), task.method_name) for task in tasks]
    listed, context = examples()
    return MultiInferenceRequest(domain_tasks, listed, deadline, context)


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


def _fields_and_examples(raw: bytes) -> tuple[dict[int, list[bytes]], Callable[[], tuple[list[bytes], bytes]]]:
    """The top-level length-delimited fields of a `{1: ..., 2: Input}` message by number, and a
    function giving its Input's examples and context (called after field 1 is checked, so that
    TF's error order holds). A big message is cut by hand (`examples_bytes`), without whole-message
    C calls that hold the GIL; anything unusual about it goes to protobuf, as a small one does."""
    cut = examples_bytes.cut_examples(raw) if len(raw) >= examples_bytes.CUT_BYTES else None
    if cut is not None:
        fields, listed, context = cut

        def cut_out() -> tuple[list[bytes], bytes]:
            if not listed:
                raise InvalidArgument("Input is empty.")
            return listed, context

        return fields, cut_out
    fields = _top_level_fields(raw)
    return fields, lambda: _serialized_examples(fields.get(2, ()))


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
