"""What every servable shares, whatever runtime computes it: signatures and the checks on feeds.

A signature is a named entry point of a servable: typed inputs and outputs (each an alias of a
tensor) and a method name, as in TF Serving's SignatureDef. The method names and the default key are
TF Serving's own (spec §6, §7.3); this module is their one home.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import InvalidInputError

PREDICT_METHOD: Final = "tensorflow/serving/predict"
CLASSIFY_METHOD: Final = "tensorflow/serving/classify"
REGRESS_METHOD: Final = "tensorflow/serving/regress"
DEFAULT_SERVING_SIGNATURE: Final = "serving_default"

Shape = tuple[int | None, ...] | None  # None: unknown rank; a None dim: unknown size
# The one name for "alias (or tensor name) -> array", feeds and outputs alike, everywhere in the
# exporter and the cluster: read-only to whoever receives it (a producer builds a dict).
Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class TensorInfo:
    """A signature input or output: the runtime's tensor name, dtype and static shape."""

    name: str
    dtype: DType
    shape: Shape


@dataclass(frozen=True)
class Signature:
    key: str
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


class Shaped(Protocol):
    """What `check_feeds` reads of a feed: an ndarray, or a `TensorClaim` (nothing decoded yet)."""

    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TensorClaim:
    """A tensor's dtype and shape as a request claims them, before its values are decoded."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)


def check_feeds(sig: Signature, feeds: Mapping[str, Shaped]) -> None:
    """Raises InvalidInputError unless `feeds` has exactly the signature's inputs, typed and shaped."""
    if feeds.keys() != sig.inputs.keys():
        extra = sorted(set(feeds) - set(sig.inputs))
        missing = sorted(set(sig.inputs) - set(feeds))
        raise InvalidInputError(
            "input size does not match signature: "
            f"{len(feeds)}!={len(sig.inputs)} len({{{', '.join(sorted(feeds))}}}) != "
            f"len({{{', '.join(sorted(sig.inputs))}}}). Sent extra: {{{', '.join(extra)}}}. "
            f"Missing but required: {{{', '.join(missing)}}}."
        )
    for alias, info in sig.inputs.items():
        array = feeds[alias]
        expected = dtypes.to_numpy(info.dtype)
        if array.dtype != expected:
            raise InvalidInputError(
                f"Expects arg {alias!r} to be {dtypes.name(info.dtype)} but "
                f"{_dtype_name(array.dtype)} is provided"
            )
        shape = info.shape
        if shape is None:
            continue
        if array.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, array.shape, strict=True)):
            want = [-1 if d is None else d for d in shape]
            raise InvalidInputError(f"input {alias!r}: expected shape {want}, got {list(array.shape)}")


def _dtype_name(dtype: np.dtype) -> str:
    try:
        return dtypes.name(dtypes.from_numpy(dtype))
    except ValueError:
        return str(dtype)
