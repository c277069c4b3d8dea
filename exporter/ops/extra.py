"""Small generic ops used by feature columns (and open to any graph).

- `DenseToSparse`: a dense string or integer tensor [batch] or [batch, k] -> the three tensors of a
  SparseTensor (indices int64 [n, 2], values [n], dense_shape int64 [2]) keeping every entry that
  is not the "missing" marker: b"" for strings, -1 for integers (TF's categorical columns drop the
  same values when they are fed a dense tensor). A [batch] input is read as [batch, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError
from exporter.features import SparseTensor
from exporter.ops.registry import TensorType, register_op

if TYPE_CHECKING:
    from exporter.graph import Tensor


def _infer_dense_to_sparse(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (x,) = inputs
    if x.dtype != dtypes.STRING and x.dtype not in dtypes.INTEGER:
        raise GraphError(f"DenseToSparse takes strings or integers, got {dtypes.name(x.dtype)}")
    if x.rank not in (1, 2):
        raise GraphError(f"DenseToSparse takes [batch] or [batch, k], got shape {x.shape}")
    return [TensorType(dtypes.INT64, (None, 2)), TensorType(x.dtype, (None,)), TensorType(dtypes.INT64, (2,))]


@register_op("DenseToSparse", infer=_infer_dense_to_sparse, num_inputs=1)
def _dense_to_sparse(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    x = inputs[0]
    matrix = x.reshape(-1, 1) if x.ndim == 1 else x
    keep = matrix != (b"" if matrix.dtype == object else -1)
    rows, cols = np.nonzero(keep)  # row-major order: the canonical order of a SparseTensor
    indices = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
    dense_shape = np.array(matrix.shape, dtype=np.int64)
    return [indices, matrix[rows, cols], dense_shape]


def dense_to_sparse(x: Tensor, name: str | None = None) -> SparseTensor:
    """The SparseTensor of `x`'s present entries (not b"" / -1), as TF's categorical columns see it."""
    indices, values, dense_shape = x.graph.apply("DenseToSparse", [x], name=name)
    return SparseTensor(indices, values, dense_shape)
