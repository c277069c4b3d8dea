"""The import-time check of a converted SavedModel signature: its ONNX body opens in onnxruntime,
runs, and answers as TensorFlow does on a small synthetic batch.

tf2onnx can write a model that onnxruntime refuses or that computes something else (an op it
converted with other semantics); such a body is never published. The batch gives every input a
value (floats 0.5, integers 0, strings empty; unknown dimensions 2 for the batch, else 1) and,
where the signature parses tf.Examples, one example with every feature set, parsed by Tessera's
own parser as the served bundle will parse it. TensorFlow's answer comes from `reference` (the
original signature, see savedmodel_tf); if TensorFlow itself refuses the synthetic batch (a model
that needs real data), only the opening is checked. No TensorFlow is imported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from exporter import dtypes
from exporter.errors import BundleError, ExportError, InvalidInputError
from exporter.example_parser import parse_example
from exporter.features import FeatureSpec, FixedLenFeature, SparseTensorValue
from exporter.importers.savedmodel_types import ConvertedSignature
from exporter.signature import TensorInfo
from protos.tessera import example_pb2

TOLERANCE = 1e-4  # relative and absolute; the fidelity tests hold every model to 1e-5 on real data
Reference = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
_log = logging.getLogger(__name__)


class ReferenceRefused(Exception):
    """TensorFlow refused the synthetic batch (raised by a Reference)."""


def synthetic_array(info: TensorInfo, batch: int) -> np.ndarray:
    dims = info.shape if info.shape is not None else (None,)
    shape = tuple((batch if i == 0 else 1) if d is None else d for i, d in enumerate(dims))
    if info.dtype == dtypes.STRING:
        out = np.empty(shape, dtype=object)
        out.reshape(-1)[:] = [b""] * int(np.prod(shape))
        return out
    value = 0.5 if info.dtype in dtypes.FLOATING else 0
    return np.full(shape, value, dtype=dtypes.to_numpy(info.dtype))


def synthetic_examples(spec: Mapping[str, FeatureSpec], batch: int) -> np.ndarray:
    """`batch` serialized tf.Examples giving every feature a value (var-len ones one value)."""
    example = example_pb2.Example()
    for name, feature in spec.items():
        size = int(np.prod(feature.shape)) if isinstance(feature, FixedLenFeature) else 1
        target = example.features.feature[name]
        if feature.dtype == dtypes.STRING:
            target.bytes_list.value.extend([b""] * size)
        elif feature.dtype == dtypes.INT64:
            target.int64_list.value.extend([0] * size)
        else:
            target.float_list.value.extend([0.5] * size)
    out = np.empty(batch, dtype=object)
    out[:] = [example.SerializeToString()] * batch
    return out


def onnx_feeds(sig: ConvertedSignature, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ONNX body's feeds for signature inputs `raw`, parsing examples with Tessera's parser."""
    parsed = parse_example(raw[sig.examples_alias], sig.feature_spec) if sig.examples_alias else {}
    feeds = {}
    for name, feed in sig.feeds.items():
        if feed.feature is None:
            assert feed.alias is not None  # Feed's contract: an input fed as is names its alias
            feeds[name] = raw[feed.alias]
            continue
        value = parsed[feed.feature]
        feeds[name] = getattr(value, feed.part) if isinstance(value, SparseTensorValue) else value
    return feeds


def _text(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _same(want: np.ndarray, have: np.ndarray) -> bool:
    if want.shape != have.shape:
        return False
    if want.dtype == object or have.dtype == object:
        return all(_text(a) == _text(b) for a, b in zip(want.reshape(-1), have.reshape(-1), strict=True))
    return bool(np.allclose(want, have, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True))


def check_signature(sig: ConvertedSignature, reference: Reference, batch: int = 2) -> None:
    """ExportError unless the ONNX body opens, runs and agrees with `reference` (module docstring)."""
    from exporter.onnx_model import OnnxModel

    raw = {
        alias: synthetic_examples(sig.feature_spec, batch) if alias == sig.examples_alias else synthetic_array(info, batch)
        for alias, info in sig.inputs.items()
    }
    try:
        model = OnnxModel(sig.onnx_model)
    except BundleError as e:
        raise ExportError(f"signature {sig.key!r}: the converted ONNX body does not load in onnxruntime: {e}") from None
    try:
        try:
            expected = reference(raw)
        except ReferenceRefused as e:
            _log.info("signature %r: no synthetic check (TensorFlow refuses the batch: %s)", sig.key, e)
            return
        try:
            got = model.run(onnx_feeds(sig, raw), sorted(set(sig.fetches.values())))
        except InvalidInputError as e:
            raise ExportError(f"signature {sig.key!r}: the converted ONNX body fails in onnxruntime: {e}") from None
        for alias, name in sig.fetches.items():
            if not _same(np.asarray(expected[alias]), np.asarray(got[name])):
                raise ExportError(
                    f"signature {sig.key!r}: output {alias!r} of the converted ONNX body differs from "
                    "TensorFlow's on a synthetic batch; refusing to publish it"
                )
    finally:
        model.close()
