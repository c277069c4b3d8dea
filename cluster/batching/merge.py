"""Merge requests into one batch along dim 0, and split the outputs back (spec §4.15).

Pure numpy: work is done per request and per tensor, never per row. Padding rows (to reach an
allowed batch size) repeat the first row of the batch, as TF Serving does, so the model only ever
sees plausible inputs; they are cut off before outputs are split, so they never leak.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from cluster.errors import FailedPrecondition, InvalidArgument
from exporter.signature import Tensors


def row_count(inputs: Tensors) -> int:
    """The batch size of one request: the shared dim 0 of all its tensors."""
    rows: int | None = None
    for array in inputs.values():
        if array.ndim == 0:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    if rows is None:
        raise InvalidArgument("Batching Run() needs at least one input tensor")
    return rows


def shape_key(inputs: Tensors, *, pad_variable_length: bool) -> Hashable:
    """Requests with equal keys can share a batch.

    Aliases and dtypes must always agree (concatenation would otherwise silently upcast). The
    non-batch dims must agree too, unless `pad_variable_length`, where only the ranks must.
    """
    if len(inputs) == 1:  # one tensor (most models): a tuple, never equal to a frozenset of several
        ((alias, a),) = inputs.items()
        return (alias, a.dtype, a.ndim) if pad_variable_length else (alias, a.dtype, a.shape[1:])
    if pad_variable_length:
        return frozenset((alias, a.dtype, a.ndim) for alias, a in inputs.items())
    return frozenset((alias, a.dtype, a.shape[1:]) for alias, a in inputs.items())


def group_compatible(requests: Sequence[Tensors], *, pad_variable_length: bool) -> list[list[int]]:
    """Indices of `requests` grouped by `shape_key`, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(shape_key(request, pad_variable_length=pad_variable_length), []).append(index)
    return list(groups.values())


def next_allowed_batch_size(rows: int, allowed_batch_sizes: Sequence[int]) -> int:
    """The smallest allowed size >= rows (rows itself when any size is allowed)."""
    if not allowed_batch_sizes:
        return rows
    index = bisect.bisect_left(allowed_batch_sizes, rows)
    if index == len(allowed_batch_sizes):
        raise ValueError(f"batch of {rows} rows exceeds the largest allowed size {allowed_batch_sizes[-1]}")
    return allowed_batch_sizes[index]


def check_allowed_batch_sizes(allowed_batch_sizes: Sequence[int], max_batch_size: int) -> None:
    """TF Serving's validation of `allowed_batch_sizes` (INVALID_ARGUMENT when broken)."""
    if not allowed_batch_sizes:
        return
    if any(b <= a for a, b in itertools.pairwise(allowed_batch_sizes)) or allowed_batch_sizes[0] < 1:
        raise InvalidArgument("allowed_batch_sizes entries must be monotonically increasing")
    if allowed_batch_sizes[-1] != max_batch_size:
        raise InvalidArgument("final entry in allowed_batch_sizes must equal max_batch_size")


@dataclass(frozen=True, slots=True)
class MergedBatch:
    """One batch: the merged tensors, each request's row count, and the padding rows at the end."""

    inputs: dict[str, np.ndarray]
    row_counts: tuple[int, ...]
    padding_rows: int


def merge_inputs(
    requests: Sequence[Tensors],
    *,
    row_counts: Sequence[int] | None = None,
    target_rows: int | None = None,
    pad_variable_length: bool = False,
) -> MergedBatch:
    """Concatenate the requests along dim 0, then pad with copies of row 0 up to `target_rows`.

    With `pad_variable_length`, shorter non-batch dims are padded at their end with the first
    element of that request's tensor (TF Serving's choice); otherwise they must match exactly.
    Every request must have the same aliases and dtypes (group them with `shape_key` first).
    A single request that needs no padding is passed through without a copy.
    """
    if not requests:
        raise ValueError("merge_inputs needs at least one request")
    counts = tuple(row_counts) if row_counts is not None else tuple(row_count(r) for r in requests)
    total = sum(counts)
    target = total if target_rows is None else target_rows
    if target < total:
        raise ValueError(f"target_rows {target} is smaller than the {total} rows to merge")
    # Padding needs a row to copy; an all-empty batch runs as it is.
    padding = target - total if total > 0 else 0

    merged: dict[str, np.ndarray] = {}
    for alias, first in requests[0].items():
        parts = [r[alias] for r in requests]
        dtype = first.dtype
        if any(p.dtype != dtype for p in parts):
            raise ValueError(f"cannot merge input {alias!r}: dtypes differ across requests")
        inner = first.shape[1:]
        if pad_variable_length and any(p.shape[1:] != inner for p in parts):
            merged[alias] = _merge_padded(parts, total + padding, padding)
            continue
        if padding:
            first_row = next(p for p in parts if p.shape[0])[:1]  # row 0 of the batch
            parts.append(np.repeat(first_row, padding, axis=0))
        merged[alias] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return MergedBatch(merged, counts, padding)


def _merge_padded(parts: list[np.ndarray], rows: int, padding: int) -> np.ndarray:
    """Copy parts of differing non-batch dims into one array of their maximal shape (one copy)."""
    inner = tuple(np.max([p.shape[1:] for p in parts], axis=0).tolist())
    out = np.empty((rows, *inner), dtype=parts[0].dtype)
    offset = 0
    for part in parts:
        n = part.shape[0]
        region = out[offset : offset + n]
        if part.shape[1:] != inner:
            region[...] = _pad_value(part)
        region[(slice(None), *(slice(0, s) for s in part.shape[1:]))] = part
        offset += n
    if padding:
        out[offset:] = out[:1]
    return out


def _pad_value(part: np.ndarray) -> object:
    if part.size:
        return part.flat[0]
    return b"" if part.dtype == object else np.zeros((), dtype=part.dtype)[()]


def split_outputs(
    outputs: Tensors, row_counts: Sequence[int], *, padding_rows: int = 0
) -> list[dict[str, np.ndarray]]:
    """Cut each batched output into per-request views; padding rows at the end are dropped."""
    total = sum(row_counts)
    expected = total + padding_rows
    bounds = list(zip(itertools.accumulate(row_counts, initial=0), itertools.accumulate(row_counts), strict=False))
    per_request: list[dict[str, np.ndarray]] = [{} for _ in row_counts]
    for alias, array in outputs.items():
        if array.ndim == 0:
            raise FailedPrecondition(f"Batched output tensor {alias} has 0 dimensions")
        if array.shape[0] != expected:
            raise FailedPrecondition(
                f"Batched output tensor {alias}'s 0th dimension ({array.shape[0]}) does not equal the "
                f"sum of the 0th dimension sizes of the input tensors ({expected})"
            )
        # Basic slices, not np.split: the same views at a tenth of the cost (~40 us per batch of 32).
        for request_outputs, (start, stop) in zip(per_request, bounds, strict=True):
            request_outputs[alias] = array[start:stop]
    return per_request


def slice_rows(inputs: Tensors, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows [start, stop) of every tensor, as views (no copy)."""
    return {alias: array[start:stop] for alias, array in inputs.items()}


def concat_outputs(parts: Sequence[Tensors]) -> dict[str, np.ndarray]:
    """Reassemble the outputs of consecutive chunks of one request."""
    if len(parts) == 1:
        return dict(parts[0])
    return {alias: np.concatenate([p[alias] for p in parts], axis=0) for alias in parts[0]}
