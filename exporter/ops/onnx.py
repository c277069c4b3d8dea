"""`OnnxModel`: a graph node that runs an ONNX model stored in the bundle, on ONNX Runtime.

The model is a bundle asset (``assets/model-<sha256 prefix>.onnx``), so the manifest lists and
checksums it like every other file, and receivers, feature columns and heads wrap the node as they
wrap the numpy ops. Attributes:

- ``asset``: the .onnx file's name under assets/;
- ``input_names`` / ``output_names``: the ONNX graph's input and output names, in the order of the
  node's inputs and outputs (a node may compute only some of the model's outputs);
- ``input_dtypes``, ``input_ranks``, ``input_dims`` and the same for outputs: the types the ONNX
  graph declared when the node was built (dims flattened, -1 an unknown dim; rank -1 an unknown rank).

`infer` checks the node's inputs against the declared input types and returns the declared output
types (the same rule at build and at load). `prepare`, once per load, opens the model through
`exporter.onnx_model` (the one wrapper around onnxruntime) and checks that the ONNX graph declares
exactly these types, so a bundle whose graph.pb and .onnx disagree does not load; nodes naming the
same asset share one session, and every batch runs on it (`OnnxModel.run` is thread-safe). Loading
never executes code from the bundle: an ONNX graph is data, run by ONNX Runtime's own operators.

This module, `exporter.onnx_model` and `exporter.onnx_check` are the only ones that touch ONNX; onnxruntime is imported
when a model is first opened, never by importing this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter import dtypes
from exporter.errors import BundleError, GraphError
from exporter.ops.registry import LoadContext, TensorType, register_op
from exporter.signature import Shape, TensorInfo

if TYPE_CHECKING:
    from exporter.graph import Tensor
    from exporter.onnx_model import OnnxModel

OP = "OnnxModel"


def _encode_shapes(shapes: Sequence[Shape]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ranks: list[int] = []
    dims: list[int] = []
    for shape in shapes:
        if shape is None:
            ranks.append(-1)
            continue
        ranks.append(len(shape))
        dims.extend(-1 if d is None else int(d) for d in shape)
    return tuple(ranks), tuple(dims)


def _decode_shapes(ranks: Sequence[int], dims: Sequence[int]) -> list[Shape]:
    shapes: list[Shape] = []
    at = 0
    for rank in ranks:
        if rank < 0:
            shapes.append(None)
            continue
        if at + rank > len(dims):
            raise GraphError("shape attributes are truncated")
        shapes.append(tuple(None if d < 0 else int(d) for d in dims[at : at + rank]))
        at += rank
    if at != len(dims):
        raise GraphError("shape attributes have dims left over")
    return shapes


def _declared(attrs: Mapping[str, Any], kind: str) -> list[tuple[str, TensorType]]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in attrs[f"{kind}_names"]]
    kinds = [int(d) for d in attrs[f"{kind}_dtypes"]]
    shapes = _decode_shapes(attrs[f"{kind}_ranks"], attrs[f"{kind}_dims"])
    if not (len(names) == len(kinds) == len(shapes)):
        raise GraphError(f"{kind} names, dtypes and shapes differ in length")
    return [(n, TensorType(d, s)) for n, d, s in zip(names, kinds, shapes, strict=True)]


def _compatible(actual: Shape, declared: Shape) -> bool:
    if actual is None or declared is None:
        return True
    if len(actual) != len(declared):
        return False
    return all(a is None or d is None or a == d for a, d in zip(actual, declared, strict=True))


def _infer(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    declared_inputs = _declared(attrs, "input")
    if len(inputs) != len(declared_inputs):
        raise GraphError(f"the node has {len(inputs)} inputs, the model reads {len(declared_inputs)}")
    for actual, (name, want) in zip(inputs, declared_inputs, strict=True):
        if actual.dtype != want.dtype:
            raise GraphError(
                f"ONNX input {name!r} is {dtypes.name(want.dtype)}, fed {dtypes.name(actual.dtype)}"
            )
        if not _compatible(actual.shape, want.shape):
            raise GraphError(f"ONNX input {name!r} has shape {want.shape}, fed {actual.shape}")
    outputs = _declared(attrs, "output")
    if not outputs:
        raise GraphError("the node computes no output")
    return [t for _, t in outputs]


@dataclass(frozen=True)
class _Session:
    model: OnnxModel
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def _check_against(model_infos: Mapping[str, TensorInfo], declared: list[tuple[str, TensorType]], kind: str) -> None:
    for name, want in declared:
        info = model_infos.get(name)
        if info is None:
            raise GraphError(f"the ONNX model has no {kind} {name!r} (it has {', '.join(sorted(model_infos))})")
        if info.dtype != want.dtype or not _compatible(info.shape, want.shape):
            raise GraphError(
                f"ONNX {kind} {name!r} is {dtypes.name(info.dtype)}{list(info.shape or [])}, "
                f"the graph declares {dtypes.name(want.dtype)}{list(want.shape or [])}"
            )


def _prepare(attrs: Mapping[str, Any], ctx: LoadContext) -> _Session:
    from exporter.onnx_model import OnnxModel  # onnxruntime only once a model is opened

    asset = attrs["asset"].decode() if isinstance(attrs["asset"], bytes) else str(attrs["asset"])
    path = ctx.asset_path(asset)
    key = f"{OP}:{path}"
    model = ctx.shared.get(key)
    if model is None:
        try:
            model = OnnxModel(path.read_bytes(), base_dir=path.parent, options=ctx.options)
        except BundleError as e:
            raise GraphError(f"asset {asset!r}: {e}") from None
        ctx.shared[key] = model  # one session per asset and load; the runtime closes it
    declared_inputs, declared_outputs = _declared(attrs, "input"), _declared(attrs, "output")
    _check_against(model.inputs, declared_inputs, "input")
    if {n for n, _ in declared_inputs} != set(model.inputs):
        raise GraphError(f"the node feeds {[n for n, _ in declared_inputs]}, the model reads {sorted(model.inputs)}")
    _check_against(model.outputs, declared_outputs, "output")
    return _Session(model, tuple(n for n, _ in declared_inputs), tuple(n for n, _ in declared_outputs))


@register_op(OP, infer=_infer, min_inputs=1, prepare=_prepare)
def _run(inputs: list[np.ndarray], session: _Session) -> list[np.ndarray]:
    # InvalidInputError from OnnxModel.run (data the model refuses) fails the request, not the server.
    # Strings are bytes in and out (OnnxModel converts to and from onnxruntime's str).
    outs = session.model.run(dict(zip(session.input_names, inputs, strict=True)), session.output_names)
    return [outs[name] for name in session.output_names]


# -- functional wrapper -------------------------------------------------------------------------
_INFOS: dict[bytes, tuple[dict[str, TensorInfo], dict[str, TensorInfo]]] = {}
_INFOS_KEPT = 8  # an export builds the model once per receiver: remember the last few models


def model_infos(model: bytes) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
    """The ONNX graph's inputs and outputs (name -> TensorInfo), read by opening the model once
    (through exporter.onnx_model, which checks it); GraphError if it does not open."""
    from exporter.onnx_model import OnnxModel

    digest = hashlib.sha256(model).digest()
    if digest not in _INFOS:
        try:
            opened = OnnxModel(model)
        except BundleError as e:
            raise GraphError(f"the ONNX model does not open: {e}") from None
        try:
            infos = dict(opened.inputs), dict(opened.outputs)
        finally:
            opened.close()
        if len(_INFOS) >= _INFOS_KEPT:
            _INFOS.pop(next(iter(_INFOS)))
        _INFOS[digest] = infos
    inputs, outputs = _INFOS[digest]
    return dict(inputs), dict(outputs)


def onnx_call(
    model: bytes,
    inputs: Mapping[str, Tensor],
    outputs: Sequence[str] | None = None,
    name: str | None = None,
) -> dict[str, Tensor]:
    """Adds a node running the ONNX `model` on `inputs` (ONNX input name -> Tensor of its dtype).

    Returns ONNX output name -> Tensor for `outputs` (default: every output of the model), each
    typed as the ONNX graph declares it, with dim 0 the batch. The model
    bytes become a bundle asset named by their digest, so calling the same model from two receivers
    stores it once (and a load opens one session for both). GraphError if the model does not open
    (exporter.onnx_model checks it), an input is missing or extra, or a dtype differs.
    """
    if not inputs:
        raise GraphError("onnx_call needs at least one input")
    g = next(iter(inputs.values())).graph
    model = bytes(model)
    model_inputs, model_outputs = model_infos(model)
    if set(inputs) != set(model_inputs):
        raise GraphError(
            f"the ONNX model reads inputs {sorted(model_inputs)}; given {sorted(inputs)}"
        )
    wanted = list(model_outputs) if outputs is None else list(outputs)
    unknown = [o for o in wanted if o not in model_outputs]
    if unknown or not wanted:
        raise GraphError(f"the ONNX model has outputs {sorted(model_outputs)}; asked for {wanted}")
    order = list(model_inputs)
    # Dim 0 of every output is the batch (the servable contract), whatever the converter declared:
    # some declare a fixed [1] for a per-row output (onnxmltools' LightGBM labels).
    for out in wanted:
        shape = model_outputs[out].shape
        if shape:
            model_outputs[out] = TensorInfo(model_outputs[out].name, model_outputs[out].dtype, (None, *shape[1:]))
    asset = g.add_asset(f"model-{hashlib.sha256(model).hexdigest()[:16]}.onnx", model)
    in_ranks, in_dims = _encode_shapes([model_inputs[n].shape for n in order])
    out_ranks, out_dims = _encode_shapes([model_outputs[n].shape for n in wanted])
    attrs = {
        "asset": asset,
        "input_names": order,
        "input_dtypes": [model_inputs[n].dtype for n in order],
        "input_ranks": in_ranks,
        "input_dims": in_dims,
        "output_names": wanted,
        "output_dtypes": [model_outputs[n].dtype for n in wanted],
        "output_ranks": out_ranks,
        "output_dims": out_dims,
    }
    tensors = g.apply(OP, [inputs[n] for n in order], attrs, name=name or "onnx")
    return dict(zip(wanted, tensors, strict=True))
