"""Building graphs: a GraphBuilder collects nodes, variables and assets; Tensors are symbolic.

Every node is an op from the one registry (exporter.ops.registry). Types are inferred as nodes
are added, so a wiring or dtype mistake fails at build time, naming the node. The same check runs
again when a bundle is loaded (exporter.runtime), since a bundle may come from anywhere.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter import attrs as attr_codec
from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import GraphError
from exporter.ops.registry import TensorType, get_op
from exporter.signature import Shape
from protos.tessera import bundle_pb2

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


@dataclass(frozen=True, eq=False)
class Tensor:
    """Output `index` of node `node` in `graph`, with its static type."""

    graph: GraphBuilder
    node: str
    index: int
    type: TensorType

    @property
    def name(self) -> str:
        return f"{self.node}:{self.index}"

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> Shape:
        return self.type.shape

    def __repr__(self) -> str:
        return f"Tensor({self.name}, {dtypes.name(self.dtype)}, {self.shape})"


def shape_to_attr(shape: Shape) -> tuple[int, ...]:
    """Static shape -> attribute ints (-1 for an unknown dim)."""
    if shape is None:
        raise GraphError("a placeholder needs a known rank")
    return tuple(-1 if d is None else int(d) for d in shape)


class GraphBuilder:
    """Collects the nodes of one graph, its variables (saved as .npy) and its asset files."""

    def __init__(self) -> None:
        self._nodes: list[bundle_pb2.NodeDef] = []
        self._types: dict[str, list[TensorType]] = {}
        self._scope: list[str] = []
        self._variable_nodes: dict[str, Tensor] = {}
        self.variables: dict[str, np.ndarray] = {}
        self.assets: dict[str, bytes] = {}

    # -- naming -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def name_scope(self, prefix: str) -> Iterator[None]:
        """Prefixes the names of nodes created inside with `prefix/`."""
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique_name(self, base: str) -> str:
        full = "/".join([*self._scope, base])
        if not _NAME_RE.match(full):
            raise GraphError(f"invalid node name {full!r}")
        name, n = full, 1
        while name in self._types:
            name = f"{full}_{n}"
            n += 1
        return name

    # -- nodes --------------------------------------------------------------------------------
    def apply(
        self,
        op: str,
        inputs: Sequence[Tensor],
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> list[Tensor]:
        """Adds a node running registered op `op` on `inputs`; returns its outputs."""
        attrs = dict(attrs or {})
        node_name = self._unique_name(name or op)
        opdef = get_op(op)
        for t in inputs:
            if t.graph is not self:
                raise GraphError(f"node {node_name!r}: input {t.name} belongs to another graph")
        try:
            opdef.check_arity(len(inputs))
            out_types = opdef.infer([t.type for t in inputs], attrs)
        except GraphError as e:
            raise GraphError(f"node {node_name!r} ({op}): {e}") from None
        node = bundle_pb2.NodeDef(name=node_name, op=op, inputs=[t.name for t in inputs])
        for key, value in attr_codec.encode_map(attrs).items():
            node.attrs[key].CopyFrom(value)
        self._nodes.append(node)
        self._types[node_name] = list(out_types)
        return [Tensor(self, node_name, i, t) for i, t in enumerate(out_types)]

    def placeholder(self, dtype: DType, shape: Shape, name: str) -> Tensor:
        """A fed input. Dim 0 is the batch dimension by convention (usually None)."""
        return self.apply("Placeholder", [], {"dtype": dtype, "shape": shape_to_attr(shape)}, name=name)[0]

    def constant(self, value: Any, dtype: DType | None = None, name: str | None = None) -> Tensor:
        """An inline constant (small: labels, boundaries, scalars). Large arrays: `variable`."""
        array = dtypes.as_array(value, dtype) if dtype is not None else np.asarray(value)
        if array.dtype.kind == "U":
            array = dtypes.as_array(array, dtypes.STRING)
        if array.dtype == np.float64 and dtype is None:
            array = array.astype(np.float32)  # float32 is the default float, as in TF
        if array.dtype == np.int32 and dtype is None and array.ndim == 0:
            array = array.astype(np.int64)
        return self.apply("Const", [], {"value": array}, name=name or "Const")[0]

    def variable(self, value: np.ndarray, name: str) -> Tensor:
        """A trained array, saved under variables/ and memory-mapped at load.

        The same name twice returns the same node (the model is shared by every receiver).
        """
        array = np.ascontiguousarray(value)
        if array.dtype.kind not in "biuf":
            raise GraphError(f"variable {name!r}: only numeric and bool arrays can be variables")
        if name in self._variable_nodes:
            if not np.array_equal(self.variables[name], array):
                raise GraphError(f"variable {name!r} defined twice with different values")
            return self._variable_nodes[name]
        if not _NAME_RE.match(name) or ".." in name or "/" in name:
            raise GraphError(f"invalid variable name {name!r}: use letters, digits, _ . -")
        self.variables[name] = array
        attrs = {"key": name, "dtype": dtypes.from_numpy(array.dtype), "shape": array.shape}
        saved_scope, self._scope = self._scope, []
        try:
            tensor = self.apply("Variable", [], attrs, name=f"variables/{name}")[0]
        finally:
            self._scope = saved_scope
        self._variable_nodes[name] = tensor
        return tensor

    def add_asset(self, filename: str, content: bytes) -> str:
        """Adds a file under assets/ (a vocabulary, ...); returns the name ops refer to it by."""
        if "/" in filename or filename.startswith(".") or not filename:
            raise GraphError(f"invalid asset name {filename!r}")
        if filename in self.assets and self.assets[filename] != content:
            raise GraphError(f"asset {filename!r} added twice with different content")
        self.assets[filename] = content
        return filename

    def to_proto(self) -> bundle_pb2.GraphDef:
        return bundle_pb2.GraphDef(nodes=self._nodes)
