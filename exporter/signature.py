"""What every servable shares, whatever runtime computes it: signatures and the checks on feeds.

A signature is a named entry point of a servable: typed inputs and outputs (each an alias of a
tensor) and a method name, as in TF Serving's SignatureDef. The method names and the default key are
TF Serving's own (spec §6, §7.3); this module is their one home.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
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

    @cached_property
    def input_checks(self) -> tuple[InputCheck, ...]:
        """What `check_claims` compares each input with, worked out once per signature (not per request)."""
        return tuple(_input_check(alias, info) for alias, info in self.inputs.items())


# An input's check: (alias, its TensorInfo, the numpy dtype its values must have (None: the dtype has
# no numpy type, which `check_claims` reports as `dtypes.to_numpy` does), its rank (None: any) and
# its known dims as (index, size)).
InputCheck = tuple[str, TensorInfo, np.dtype[Any] | None, int | None, tuple[tuple[int, int], ...]]


def _input_check(alias: str, info: TensorInfo) -> InputCheck:
    try:
        expected: np.dtype[Any] | None = dtypes.to_numpy(info.dtype)
    except ValueError:
        expected = None
    shape = info.shape
    if shape is None:
        return alias, info, expected, None, ()
    return alias, info, expected, len(shape), tuple((i, d) for i, d in enumerate(shape) if d is not None)


class Shaped(Protocol):
    """What `check_feeds` reads of a feed: an ndarray, or anything else with a dtype and a shape."""

    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


# A tensor's numpy dtype and shape as a request claims them, before its values are decoded.
Claim = tuple[np.dtype[Any], tuple[int, ...]]


def check_feeds(sig: Signature, feeds: Mapping[str, Shaped]) -> None:
    """Raises InvalidInputError unless `feeds` has exactly the signature's inputs, typed and shaped."""
    check_claims(sig, {alias: (feed.dtype, feed.shape) for alias, feed in feeds.items()})


def check_claims(sig: Signature, claims: Mapping[str, Claim]) -> None:
    """`check_feeds` on (dtype, shape) pairs: a request's tensors as their headers claim them, before
    anything is decoded, with the same checks and messages as on arrays."""
    if claims.keys() != sig.inputs.keys():
        extra = sorted(set(claims) - set(sig.inputs))
        missing = sorted(set(sig.inputs) - set(claims))
        raise InvalidInputError(
            "input size does not match signature: "
            f"{len(claims)}!={len(sig.inputs)} len({{{', '.join(sorted(claims))}}}) != "
            f"len({{{', '.join(sorted(sig.inputs))}}}). Sent extra: {{{', '.join(extra)}}}. "
            f"Missing but required: {{{', '.join(missing)}}}."
        )
    for alias, info, expected, rank, known in sig.input_checks:
        dtype, shape = claims[alias]
        if expected is None:
            expected = dtypes.to_numpy(info.dtype)  # raises its ValueError, as it always did here
        if dtype != expected:
            raise InvalidInputError(
                f"Expects arg {alias!r} to be {dtypes.name(info.dtype)} but "
                f"{_dtype_name(dtype)} is provided"
            )
        if rank is None:
            continue
        bad = len(shape) != rank
        if not bad:
            for i, size in known:
                if shape[i] != size:
                    bad = True
                    break
        if bad:
            want = [-1 if d is None else d for d in info.shape or ()]
            raise InvalidInputError(f"input {alias!r}: expected shape {want}, got {list(shape)}")


def _dtype_name(dtype: np.dtype) -> str:
    try:
        return dtypes.name(dtypes.from_numpy(dtype))
    except ValueError:
        return str(dtype)
