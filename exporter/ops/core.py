"""Structural ops: placeholders, constants, variables, identity, cast, reshape, concat, squeeze,
broadcast of a row to the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.ops.registry import LoadContext, TensorType, register_op
from exporter.signature import Shape


def _shape_attr(value: Sequence[int]) -> Shape:
    return tuple(None if d < 0 else int(d) for d in value)


# -- sources ----------------------------------------------------------------------------------
def _infer_placeholder(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [TensorType(int(attrs["dtype"]), _shape_attr(attrs["shape"]))]


@register_op("Placeholder", infer=_infer_placeholder, num_inputs=0)
def _placeholder(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    raise GraphError("a Placeholder is fed, never computed")  # the runtime feeds placeholders


def _infer_const(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    value = np.asarray(attrs["value"])
    return [TensorType(dtypes.from_numpy(value.dtype), tuple(value.shape))]


def _prepare_const(attrs: Mapping[str, Any], ctx: LoadContext) -> np.ndarray:
    value = np.asarray(attrs["value"])
    value.flags.writeable = False  # shared by every run: kernels must never write into it
    return value


@register_op("Const", infer=_infer_const, num_inputs=0, prepare=_prepare_const)
def _const(inputs: list[np.ndarray], value: np.ndarray) -> list[np.ndarray]:
    return [value]


def _infer_variable(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [TensorType(int(attrs["dtype"]), tuple(int(d) for d in attrs["shape"]))]


def _prepare_variable(attrs: Mapping[str, Any], ctx: LoadContext) -> np.ndarray:
    key = attrs["key"].decode() if isinstance(attrs["key"], bytes) else attrs["key"]
    if key not in ctx.variables:
        raise GraphError(f"variable {key!r} is not in the bundle")
    array = ctx.variables[key]
    expected = dtypes.to_numpy(int(attrs["dtype"]))
    if array.dtype != expected or tuple(array.shape) != tuple(attrs["shape"]):
        raise GraphError(
            f"variable {key!r} is {array.dtype}{list(array.shape)}, graph expects "
            f"{expected}{list(attrs['shape'])}"
        )
    return array


@register_op("Variable", infer=_infer_variable, num_inputs=0, prepare=_prepare_variable)
def _variable(inputs: list[np.ndarray], array: np.ndarray) -> list[np.ndarray]:
    return [array]


# -- element-preserving ------------------------------------------------------------------------
def _infer_identity(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [inputs[0]]


@register_op("Identity", infer=_infer_identity, num_inputs=1)
def _identity(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    return [inputs[0]]


def _infer_cast(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    target = int(attrs["dtype"])
    if (inputs[0].dtype == dtypes.STRING) != (target == dtypes.STRING):
        raise GraphError("Cast cannot convert between strings and numbers")
    return [TensorType(target, inputs[0].shape)]


def _prepare_cast(attrs: Mapping[str, Any], ctx: LoadContext) -> np.dtype:
    return dtypes.to_numpy(int(attrs["dtype"]))


@register_op("Cast", infer=_infer_cast, num_inputs=1, prepare=_prepare_cast)
def _cast(inputs: list[np.ndarray], target: np.dtype) -> list[np.ndarray]:
    return [inputs[0].astype(target, copy=False)]


def _infer_reshape(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = tuple(int(d) for d in attrs["shape"])
    if sum(d == -1 for d in shape) > 1:
        raise GraphError("Reshape allows at most one -1 dimension")
    return [TensorType(inputs[0].dtype, _shape_attr(shape))]


@register_op("Reshape", infer=_infer_reshape, num_inputs=1)
def _reshape(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    try:
        return [inputs[0].reshape(attrs["shape"])]
    except ValueError as e:
        raise InvalidInputError(f"Reshape: cannot reshape {list(inputs[0].shape)} to {list(attrs['shape'])}: {e}") from None


def _infer_concat(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    kinds = {t.dtype for t in inputs}
    if len(kinds) != 1:
        raise GraphError(f"Concat inputs have different dtypes {sorted(dtypes.name(k) for k in kinds)}")
    shapes = [t.shape for t in inputs if t.shape is not None]
    ranks = {len(shape) for shape in shapes}
    if len(shapes) != len(inputs) or len(ranks) != 1:
        raise GraphError("Concat inputs must have the same known rank")
    rank = ranks.pop()
    axis = int(attrs["axis"]) % rank
    dims: list[int | None] = []
    for i in range(rank):
        sizes = [shape[i] for shape in shapes]
        if i == axis:
            fixed = [s for s in sizes if s is not None]
            dims.append(sum(fixed) if len(fixed) == len(sizes) else None)
        else:
            known = {s for s in sizes if s is not None}
            if len(known) > 1:
                raise GraphError(f"Concat inputs disagree on dim {i}: {sorted(known)}")
            dims.append(known.pop() if known else None)
    return [TensorType(inputs[0].dtype, tuple(dims))]


@register_op("Concat", infer=_infer_concat, min_inputs=1)
def _concat(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    return [np.concatenate(inputs, axis=int(attrs["axis"]))]


def _infer_squeeze(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = inputs[0].shape
    if shape is None:
        return [inputs[0]]
    axis = int(attrs["axis"]) % len(shape)
    if shape[axis] not in (1, None):
        raise GraphError(f"Squeeze: dim {axis} has size {shape[axis]}, not 1")
    return [TensorType(inputs[0].dtype, shape[:axis] + shape[axis + 1 :])]


@register_op("Squeeze", infer=_infer_squeeze, num_inputs=1)
def _squeeze(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    return [np.squeeze(inputs[0], axis=int(attrs["axis"]))]


def _infer_broadcast_rows(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    row, like = inputs
    if row.shape is None or like.shape is None or len(like.shape) < 1:
        raise GraphError("BroadcastToBatch needs a row of known shape and a batched tensor")
    return [TensorType(row.dtype, (like.shape[0], *row.shape))]


@register_op("BroadcastToBatch", infer=_infer_broadcast_rows, num_inputs=2)
def _broadcast_rows(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    # Repeats `row` once per batch row of `like`: e.g. the class labels of a classifier.
    row, like = inputs
    return [np.broadcast_to(row, (like.shape[0], *row.shape))]


# -- functional wrappers --------------------------------------------------------------------
def identity(x: Any, name: str | None = None) -> Any:
    return x.graph.apply("Identity", [x], name=name)[0]


def cast(x: Any, dtype: int, name: str | None = None) -> Any:
    return x.graph.apply("Cast", [x], {"dtype": dtype}, name=name)[0]


def reshape(x: Any, shape: Sequence[int], name: str | None = None) -> Any:
    return x.graph.apply("Reshape", [x], {"shape": tuple(shape)}, name=name)[0]


def concat(xs: Sequence[Any], axis: int, name: str | None = None) -> Any:
    return xs[0].graph.apply("Concat", list(xs), {"axis": axis}, name=name)[0]


def squeeze(x: Any, axis: int, name: str | None = None) -> Any:
    return x.graph.apply("Squeeze", [x], {"axis": axis}, name=name)[0]


def broadcast_to_batch(row: Any, like: Any, name: str | None = None) -> Any:
    return row.graph.apply("BroadcastToBatch", [row, like], name=name)[0]
