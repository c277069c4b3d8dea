"""Preprocessing steps of a scikit-learn Pipeline, as graph ops (used by exporter.converters.sklearn).

Everything is computed in float64, as scikit-learn does, so the exported outputs match
`predict_proba` / `predict` to float rounding; the heads cast to float32 at the very end.

- `Inputs`: the model's input columns, either one numeric matrix fed as ``features[input_key]``
  or one feature per named column (what a parsing receiver gives: [batch, 1] each).
- `StandardScaler`: ``(x - mean_) / scale_`` (the same operations, in the same order).
- `OneHotEncoder` on string or integer categories: a vocabulary lookup per column (the categories
  are stored as bundle assets) and a one-hot row; an unknown category gives a zero row with
  ``handle_unknown="ignore"`` and an InvalidInputError with ``"error"``.
- `ColumnTransformer` (also nested Pipelines, "passthrough", "drop", and the remainder), in
  ``transformers_`` order, as scikit-learn concatenates them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import ExportError
from exporter.feature_columns import safe_name
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import categorical, core
from exporter.ops import math as tfm


@dataclass(frozen=True)
class Inputs:
    """The input columns a step sees: names (or None) and where their tensors come from."""

    g: GraphBuilder
    features: Mapping[str, Any]
    names: tuple[str, ...] | None
    input_key: str
    whole: bool = True  # False once a ColumnTransformer picked a subset of the columns

    def column(self, j: int) -> Tensor:
        """Column `j` as [batch, 1], in the dtype it was fed."""
        if self.names is None or self.names[j] not in self.features:
            want = "named features" if self.names is None else repr(self.names[j])
            raise ExportError(f"column {j} is needed on its own: the receiver must provide {want}")
        return core.reshape(self.features[self.names[j]], (-1, 1))

    def matrix(self) -> Tensor:
        """All columns as one float64 [batch, n] matrix."""
        if self.whole and self.input_key in self.features:
            return _f64(self.features[self.input_key])
        if self.names is None:
            raise ExportError(f"the receiver gives no {self.input_key!r} matrix and the columns have no names")
        columns = [self.column(j) for j in range(len(self.names))]
        if len({c.dtype for c in columns}) != 1:
            columns = [_f64(c) for c in columns]
        # One concat, then one cast: fewer steps per request than a cast per column.
        return _f64(columns[0] if len(columns) == 1 else core.concat(columns, axis=1))

    def subset(self, indices: Sequence[int]) -> Inputs:
        names = None if self.names is None else tuple(self.names[j] for j in indices)
        return Inputs(self.g, self.features, names, self.input_key, whole=False)


def _f64(x: Tensor) -> Tensor:
    if x.dtype == dtypes.STRING:
        raise ExportError(f"{x} holds strings where the model expects numbers")
    return x if x.dtype == dtypes.DOUBLE else core.cast(x, dtypes.DOUBLE)


def category_dtype(categories: np.ndarray, where: str) -> DType:
    """STRING for str categories, INT64 for integer ones; anything else cannot be looked up."""
    values = list(categories)
    if values and all(isinstance(v, str) for v in values):
        return dtypes.STRING
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in values):
        return dtypes.INT64
    raise ExportError(f"{where}: categories {values!r} are neither all strings nor all integers")


def _column_indices(columns: Any, n: int, names: tuple[str, ...] | None) -> list[int]:
    if not isinstance(columns, str):
        try:  # integer indices, a boolean mask or a slice
            return [int(j) for j in np.atleast_1d(np.arange(n)[columns])]
        except (IndexError, TypeError, ValueError):
            pass  # column names
    keys = [columns] if isinstance(columns, str) else list(columns)
    if names is None or not all(k in names for k in keys):
        raise ExportError(f"ColumnTransformer columns {columns!r} do not name input columns {names}")
    return [names.index(k) for k in keys]


def column_dtypes(step: Any, n: int, names: tuple[str, ...] | None) -> dict[int, DType]:
    """The dtype each input column must be fed in, where it is not float (one-hot encoded columns)."""
    if isinstance(step, Pipeline):
        return column_dtypes(step.steps[0][1], n, names) if step.steps else {}
    if isinstance(step, OneHotEncoder):
        return {j: category_dtype(c, f"OneHotEncoder column {j}") for j, c in enumerate(step.categories_)}
    if isinstance(step, ColumnTransformer):
        out: dict[int, DType] = {}
        for _, transformer, columns in step.transformers_:
            indices = _column_indices(columns, n, names)
            sub = None if names is None else tuple(names[j] for j in indices)
            for k, dtype in column_dtypes(transformer, len(indices), sub).items():
                out[indices[k]] = dtype
        return out
    return {}


def apply_step(step: Any, src: Inputs | Tensor, name: str) -> Tensor:
    """The float64 [batch, d] output of a fitted transformer `step` on `src`."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return src.matrix() if isinstance(src, Inputs) else src
    if isinstance(step, FunctionTransformer) and step.func is None and step.inverse_func is None:
        return src.matrix() if isinstance(src, Inputs) else src  # how ColumnTransformer passes through
    if isinstance(step, Pipeline):
        for sub_name, sub in step.steps:
            with _graph(src).name_scope(safe_name(sub_name)):
                src = apply_step(sub, src, f"{name}.{sub_name}")
        return src if isinstance(src, Tensor) else src.matrix()
    if isinstance(step, StandardScaler):
        x = src.matrix() if isinstance(src, Inputs) else src
        g = x.graph
        if step.mean_ is not None and step.with_mean:
            x = tfm.sub(x, g.variable(np.asarray(step.mean_, np.float64), f"{safe_name(name)}.mean"))
        if step.scale_ is not None and step.with_std:
            x = tfm.div(x, g.variable(np.asarray(step.scale_, np.float64), f"{safe_name(name)}.scale"))
        return x
    if isinstance(step, OneHotEncoder):
        if not isinstance(src, Inputs):
            raise ExportError(f"{name}: a OneHotEncoder must read input columns, not the output of another step")
        return _one_hot(step, src, name)
    if isinstance(step, ColumnTransformer):
        if not isinstance(src, Inputs):
            raise ExportError(f"{name}: a ColumnTransformer must be the first step")
        n = step.n_features_in_
        blocks = []
        for sub_name, transformer, columns in step.transformers_:
            indices = _column_indices(columns, n, src.names)
            if not indices or (isinstance(transformer, str) and transformer == "drop"):
                continue
            with src.g.name_scope(safe_name(sub_name)):
                blocks.append(apply_step(transformer, src.subset(indices), f"{name}.{sub_name}"))
        if not blocks:
            raise ExportError(f"{name}: the ColumnTransformer drops every column")
        return blocks[0] if len(blocks) == 1 else core.concat(blocks, axis=1)
    raise ExportError(f"{name}: unsupported scikit-learn step {type(step).__name__}")


def _graph(src: Inputs | Tensor) -> GraphBuilder:
    return src.g if isinstance(src, Inputs) else src.graph


def _one_hot(encoder: OneHotEncoder, src: Inputs, name: str) -> Tensor:
    if getattr(encoder, "drop_idx_", None) is not None:
        raise ExportError(f"{name}: OneHotEncoder(drop=...) is not supported")
    if getattr(encoder, "_infrequent_enabled", False):
        raise ExportError(f"{name}: OneHotEncoder infrequent categories are not supported")
    ignore = encoder.handle_unknown in ("ignore", "infrequent_if_exist")
    g = src.g
    blocks = []
    for j, categories in enumerate(encoder.categories_):
        column_name = src.names[j] if src.names else f"x{j}"
        dtype = category_dtype(categories, f"{name} column {column_name!r}")
        keys = src.column(j)
        if keys.dtype != dtype:
            raise ExportError(f"{name}: column {column_name!r} is fed as {dtypes.name(keys.dtype)}, "
                              f"its categories are {dtypes.name(dtype)}")  # fmt: skip
        asset = g.add_asset(
            f"{safe_name(name)}.{safe_name(column_name)}.vocab",
            categorical.vocabulary_file(str(c) if dtype == dtypes.STRING else int(c) for c in categories),
        )
        ids = core.reshape(categorical.vocabulary_lookup(keys, asset), (-1,))
        depth = len(categories)
        if ignore:  # an unknown id (-1) one-hot encodes to a row of zeros, as scikit-learn's "ignore"
            blocks.append(tfm.one_hot(ids, depth, dtype=dtypes.DOUBLE))
        else:  # Gather refuses id -1: the request fails, as transform() raises on an unknown category
            eye = g.variable(np.eye(depth), f"{safe_name(name)}.{safe_name(column_name)}.onehot")
            blocks.append(categorical.gather(eye, ids, name=f"unknown_category_check_{safe_name(column_name)}"))
    return blocks[0] if len(blocks) == 1 else core.concat(blocks, axis=1)
