"""The one registry of ops: each op is a numpy kernel plus a type-inference rule.

An op is registered once, by name, with:
- `infer(input_types, attrs) -> [TensorType, ...]`: the dtype and static shape of each output.
  Called when the graph is built and again when it is loaded; it raises `GraphError` (without a
  node name: the caller adds it) on a dtype or arity mismatch.
- `prepare(attrs, ctx) -> state` (optional): runs once at load, e.g. to read a vocabulary asset or
  pick up a memory-mapped variable. By default the state is the attrs mapping itself.
- the kernel `kernel(inputs, state) -> [ndarray, ...]`, called on every run; inputs are batched
  along dim 0. Kernels raise `InvalidInputError` for bad data (the client's fault).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from exporter.dtypes import DType
from exporter.errors import GraphError
from exporter.signature import Shape

if TYPE_CHECKING:
    from exporter.servable import LoadOptions


@dataclass(frozen=True)
class TensorType:
    """Static type of a tensor: dtype and (possibly partial) shape."""

    dtype: DType
    shape: Shape = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass(frozen=True)
class LoadContext:
    """What ops may use at load time: memory-mapped variables, the bundle's assets folder, the
    load options (threads per session, for ops that open a runtime session), and `shared`: one
    load's memo, so nodes that open the same asset share one object.

    A state that holds more than memory-mapped arrays (an ONNX Runtime session) is a `Resource`:
    the runtime counts its `resident_bytes` and calls `close()` when the servable is closed.
    """

    variables: Mapping[str, np.ndarray] = field(default_factory=dict)
    assets_dir: pathlib.Path | None = None
    options: LoadOptions | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    def asset_path(self, filename: str) -> pathlib.Path:
        if self.assets_dir is None:
            raise GraphError(f"asset {filename!r} needed but the bundle has no assets")
        path = (self.assets_dir / filename).resolve()
        if self.assets_dir.resolve() not in path.parents:
            raise GraphError(f"asset path {filename!r} escapes the assets folder")
        return path


@runtime_checkable
class Resource(Protocol):
    """What an op's state (or something in `LoadContext.shared`) holds beyond references."""

    @property
    def resident_bytes(self) -> int: ...

    def close(self) -> None: ...


InferFn = Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]
PrepareFn = Callable[[Mapping[str, Any], LoadContext], Any]
KernelFn = Callable[[list[np.ndarray], Any], list[np.ndarray]]


def require(cond: bool, message: str) -> None:
    """A GraphError with `message` unless `cond`: an inference function's check at load."""
    if not cond:
        raise GraphError(message)


def attr_text(value: str | bytes) -> str:
    """A string attribute as text (attributes decode to bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value


def _default_prepare(attrs: Mapping[str, Any], ctx: LoadContext) -> Any:
    return attrs


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: InferFn
    kernel: KernelFn
    prepare: PrepareFn = _default_prepare
    num_inputs: int | None = None  # None: variadic, at least min_inputs
    min_inputs: int = 0

    def check_arity(self, count: int) -> None:
        if self.num_inputs is not None and count != self.num_inputs:
            raise GraphError(f"op {self.name} takes {self.num_inputs} inputs, got {count}")
        if self.num_inputs is None and count < self.min_inputs:
            raise GraphError(f"op {self.name} takes at least {self.min_inputs} inputs, got {count}")


_REGISTRY: dict[str, OpDef] = {}


def register_op(
    name: str,
    *,
    infer: InferFn,
    num_inputs: int | None = None,
    min_inputs: int = 0,
    prepare: PrepareFn | None = None,
) -> Callable[[KernelFn], KernelFn]:
    """Decorator registering `kernel` as op `name`. Names are unique."""

    def wrap(kernel: KernelFn) -> KernelFn:
        if name in _REGISTRY:
            raise ValueError(f"op {name} registered twice")
        _REGISTRY[name] = OpDef(
            name=name,
            infer=infer,
            kernel=kernel,
            prepare=prepare or _default_prepare,
            num_inputs=num_inputs,
            min_inputs=min_inputs,
        )
        return kernel

    return wrap


def get_op(name: str) -> OpDef:
    """The registered op, or GraphError naming the unknown op."""
    _load_builtin_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown op {name!r}") from None


def _load_builtin_ops() -> None:
    # Importing the kernel modules registers their ops; done lazily to avoid import cycles.
    from exporter.ops import _builtin  # noqa: F401
