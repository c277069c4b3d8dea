"""Numeric ops: element-wise arithmetic and activations, matmul, bias-add, softmax, argmax,
top-k, one-hot and reductions. Inputs are batched along dim 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.ops.registry import TensorType, register_op


def _broadcast(a: TensorType, b: TensorType) -> tuple[int | None, ...] | None:
    if a.shape is None or b.shape is None:
        return None
    out: list[int | None] = []
    for x, y in zip(reversed(a.shape), reversed(b.shape), strict=False):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif x is None or y is None:
            out.append(x if y is None else y)
        else:
            raise GraphError(f"shapes {list(a.shape)} and {list(b.shape)} do not broadcast")
    longer = a.shape if len(a.shape) >= len(b.shape) else b.shape
    out.extend(reversed(longer[: len(longer) - len(out)]))
    return tuple(reversed(out))


def _require_same_numeric(inputs: Sequence[TensorType]) -> int:
    kinds = {t.dtype for t in inputs}
    if len(kinds) != 1:
        raise GraphError(f"inputs have different dtypes: {sorted(dtypes.name(k) for k in kinds)}")
    kind = kinds.pop()
    if kind not in dtypes.NUMERIC:
        raise GraphError(f"expects numbers, got {dtypes.name(kind)}")
    return kind


def _infer_binary(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [TensorType(_require_same_numeric(inputs), _broadcast(inputs[0], inputs[1]))]


def _infer_float_unary(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if inputs[0].dtype not in dtypes.FLOATING:
        raise GraphError(f"expects a float tensor, got {dtypes.name(inputs[0].dtype)}")
    return [inputs[0]]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: no overflow for large |x|, unlike 1 / (1 + exp(-x)).
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Maximum": np.maximum,
    "Minimum": np.minimum,
}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Relu": lambda x: np.maximum(x, 0),
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Softmax": _softmax,
    "LogSoftmax": _log_softmax,
}


def _register_binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def kernel(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
        a, b = inputs
        if name == "Div" and a.dtype.kind in "iu":
            if not np.all(b):
                raise InvalidInputError("Div: integer division by zero")
            return [np.floor_divide(a, b)]
        return [fn(a, b)]

    register_op(name, infer=_infer_binary, num_inputs=2)(kernel)


def _register_unary(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    def kernel(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
        return [fn(inputs[0])]

    register_op(name, infer=_infer_float_unary, num_inputs=1)(kernel)


for _name, _binary_fn in _BINARY.items():
    _register_binary(_name, _binary_fn)
for _name, _unary_fn in _UNARY.items():
    _register_unary(_name, _unary_fn)


def _infer_matmul(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    kind = _require_same_numeric(inputs)
    a, b = inputs
    if a.shape is None or b.shape is None or len(a.shape) != 2 or len(b.shape) != 2:
        raise GraphError(f"MatMul expects rank-2 inputs, got ranks {a.rank} and {b.rank}")
    k1, k2 = a.shape[1], b.shape[0]
    if k1 is not None and k2 is not None and k1 != k2:
        raise GraphError(f"MatMul inner dimensions differ: {list(a.shape)} x {list(b.shape)}")
    return [TensorType(kind, (a.shape[0], b.shape[1]))]


@register_op("MatMul", infer=_infer_matmul, num_inputs=2)
def _matmul(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    return [inputs[0] @ inputs[1]]


def _infer_bias_add(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    kind = _require_same_numeric(inputs)
    x, bias = inputs
    if bias.shape is None or len(bias.shape) != 1 or x.shape is None or len(x.shape) < 1:
        raise GraphError("BiasAdd expects a bias vector and a value of rank >= 1")
    if None not in (x.shape[-1], bias.shape[0]) and x.shape[-1] != bias.shape[0]:
        raise GraphError(f"BiasAdd: bias size {bias.shape[0]} != last dim {x.shape[-1]}")
    return [TensorType(kind, x.shape)]


@register_op("BiasAdd", infer=_infer_bias_add, num_inputs=2)
def _bias_add(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    return [inputs[0] + inputs[1]]


def _reduced_shape(t: TensorType, axis: int, keepdims: bool = False) -> tuple[int | None, ...] | None:
    if t.shape is None:
        return None
    axis %= len(t.shape)
    if keepdims:
        return t.shape[:axis] + (1,) + t.shape[axis + 1 :]
    return t.shape[:axis] + t.shape[axis + 1 :]


def _infer_argmax(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _require_same_numeric(inputs)
    return [TensorType(dtypes.INT64, _reduced_shape(inputs[0], int(attrs["axis"])))]


@register_op("ArgMax", infer=_infer_argmax, num_inputs=1)
def _argmax(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    return [np.argmax(inputs[0], axis=int(attrs["axis"])).astype(np.int64)]


def _infer_top_k(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _require_same_numeric(inputs)
    x, k = inputs[0], int(attrs["k"])
    if x.shape is None or len(x.shape) < 1:
        raise GraphError("TopK expects rank >= 1")
    last = x.shape[-1]
    if last is not None and k > last:
        raise GraphError(f"TopK: k={k} exceeds last dim {last}")
    shape = (*x.shape[:-1], k)
    return [TensorType(x.dtype, shape), TensorType(dtypes.INT32, shape)]


@register_op("TopK", infer=_infer_top_k, num_inputs=1)
def _top_k(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    x, k = inputs[0], int(attrs["k"])
    # Stable sort on the negated values: ties keep the lower index first, as tf.math.top_k does.
    order = np.argsort(-x, axis=-1, kind="stable")[..., :k]
    return [np.take_along_axis(x, order, axis=-1), order.astype(np.int32)]


def _infer_one_hot(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if inputs[0].dtype not in dtypes.INTEGER:
        raise GraphError("OneHot expects integer indices")
    shape = None if inputs[0].shape is None else (*inputs[0].shape, int(attrs["depth"]))
    return [TensorType(int(attrs.get("dtype", dtypes.FLOAT)), shape)]


@register_op("OneHot", infer=_infer_one_hot, num_inputs=1)
def _one_hot(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    # Out-of-range indices (e.g. -1 for an unknown category) give an all-zero row, as in TF.
    depth = int(attrs["depth"])
    idx = inputs[0]
    out = (idx[..., None] == np.arange(depth)).astype(dtypes.to_numpy(int(attrs.get("dtype", dtypes.FLOAT))))
    return [out]


def _infer_reduce(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    kind = _require_same_numeric(inputs)
    return [TensorType(kind, _reduced_shape(inputs[0], int(attrs["axis"]), bool(attrs.get("keepdims"))))]


@register_op("ReduceSum", infer=_infer_reduce, num_inputs=1)
def _reduce_sum(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    return [inputs[0].sum(axis=int(attrs["axis"]), keepdims=bool(attrs.get("keepdims")))]


@register_op("ReduceMean", infer=_infer_reduce, num_inputs=1)
def _reduce_mean(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    x = inputs[0]
    return [x.mean(axis=int(attrs["axis"]), keepdims=bool(attrs.get("keepdims"))).astype(x.dtype, copy=False)]


# -- functional wrappers --------------------------------------------------------------------
def _binary(op: str) -> Callable[..., Any]:
    def fn(a: Any, b: Any, name: str | None = None) -> Any:
        return a.graph.apply(op, [a, b], name=name)[0]

    fn.__name__ = op.lower()
    fn.__doc__ = f"Element-wise {op} with numpy broadcasting."
    return fn


def _unary(op: str) -> Callable[..., Any]:
    def fn(x: Any, name: str | None = None) -> Any:
        return x.graph.apply(op, [x], name=name)[0]

    fn.__name__ = op.lower()
    fn.__doc__ = f"{op} over a float tensor (softmax variants over the last axis)."
    return fn


add, sub, mul, div = _binary("Add"), _binary("Sub"), _binary("Mul"), _binary("Div")
maximum, minimum, matmul, bias_add = _binary("Maximum"), _binary("Minimum"), _binary("MatMul"), _binary("BiasAdd")
relu, sigmoid, tanh, exp = _unary("Relu"), _unary("Sigmoid"), _unary("Tanh"), _unary("Exp")
log, sqrt, softmax, log_softmax = _unary("Log"), _unary("Sqrt"), _unary("Softmax"), _unary("LogSoftmax")


def argmax(x: Any, axis: int = -1, name: str | None = None) -> Any:
    return x.graph.apply("ArgMax", [x], {"axis": axis}, name=name)[0]


def top_k(x: Any, k: int, name: str | None = None) -> tuple[Any, Any]:
    values, indices = x.graph.apply("TopK", [x], {"k": k}, name=name)
    return values, indices


def one_hot(indices: Any, depth: int, dtype: int = dtypes.FLOAT, name: str | None = None) -> Any:
    return indices.graph.apply("OneHot", [indices], {"depth": depth, "dtype": dtype}, name=name)[0]


def reduce_sum(x: Any, axis: int, keepdims: bool = False, name: str | None = None) -> Any:
    return x.graph.apply("ReduceSum", [x], {"axis": axis, "keepdims": keepdims}, name=name)[0]

