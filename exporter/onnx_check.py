"""The checks an ONNX model passes before onnxruntime sees a byte of it.

`check_model`: the model parses as an ONNX ModelProto, passes onnx's checker, imports only opsets
onnxruntime supports (the newest each domain's schemas know), and every external-data file is a
relative path that stays inside the version directory and holds the bytes its entry claims.
Anything else is a `BundleError` that says what is wrong. `exporter.onnx_model` opens the session.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, external_data_helper, helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from exporter.errors import BundleError


def check_model(model: bytes, base_dir: pathlib.Path | None) -> onnx.ModelProto:
    """Parses and checks `model` (see the module docstring); returns the parsed ModelProto.

    `base_dir` is the directory external-data paths are relative to (the version directory); None
    when the model came without one, in which case external data is refused.
    """
    try:
        proto = onnx.load_model_from_string(model)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise BundleError(f"not an ONNX model: it does not parse as a ModelProto ({e})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise BundleError("not an ONNX model: no graph or no IR version (is this an ONNX file?)")
    _check_opsets(proto)
    _check_external_data(proto, base_dir)
    try:
        onnx.checker.check_model(_without_external_data(proto))
    except onnx.checker.ValidationError as e:
        raise BundleError(f"invalid ONNX model: {first_line(str(e))}") from None
    return proto


def _check_opsets(proto: onnx.ModelProto) -> None:
    supported = _supported_opsets()
    for opset in proto.opset_import:
        domain = opset.domain or "ai.onnx"
        if domain not in supported:
            raise BundleError(
                f"the model imports operator set domain {domain!r}, which onnxruntime does not know "
                f"(custom operators are not loaded); known: {', '.join(sorted(supported))}"
            )
        if opset.version > supported[domain]:
            raise BundleError(
                f"the model needs opset {opset.version} of {domain!r}; this onnxruntime "
                f"({ort.__version__}) supports up to {supported[domain]}: export with an older opset "
                "(e.g. torch.onnx.export(..., opset_version=N), skl2onnx target_opset=N)"
            )


_OPSETS: dict[str, int] = {}


def _supported_opsets() -> dict[str, int]:
    """Domain -> the newest opset onnxruntime has schemas for (computed once per process).

    Every opset changes at least one operator, so the newest `since_version` among onnxruntime's
    own schemas of a domain is the newest opset of that domain it knows (onnx, a separate package,
    may know newer ones: it is not what runs the model).
    """
    if not _OPSETS:
        for schema in ort_state.get_all_operator_schema():
            domain = schema.domain or "ai.onnx"
            _OPSETS[domain] = max(_OPSETS.get(domain, 0), schema.since_version)
    return _OPSETS


def _tensors(proto: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    return external_data_helper._get_all_tensors(proto)  # initializers, node and function attributes


def _check_external_data(proto: onnx.ModelProto, base_dir: pathlib.Path | None) -> None:
    for tensor in _tensors(proto):
        if not external_data_helper.uses_external_data(tensor):
            continue
        try:
            info = external_data_helper.ExternalDataInfo(tensor)
        except (ValueError, TypeError) as e:
            raise BundleError(f"tensor {tensor.name!r}: bad external-data entry ({e})") from None
        location = info.location
        where = f"tensor {tensor.name!r}: external data {location!r}"
        if base_dir is None:
            raise BundleError(f"{where}: the model has external data but no directory to read it from")
        path = pathlib.PurePath(location)
        if not location or path.is_absolute() or location.startswith(("/", "\\")) or ".." in path.parts:
            raise BundleError(f"{where} is not a relative path inside the version directory")
        root = base_dir.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise BundleError(f"{where} leaves the version directory (a symlink out of it)")
        if not target.is_file():
            raise BundleError(f"{where}: no such file in the version directory")
        size = target.stat().st_size
        offset = info.offset or 0
        length = info.length if info.length is not None else _dense_bytes(tensor)
        if offset < 0 or length < 0:
            raise BundleError(f"{where}: negative offset or length")
        if offset + length > size:
            raise BundleError(f"{where}: offset {offset} + length {length} is past the end ({size} bytes)")


def _dense_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes a tensor's values take in an external file (0 where that is not fixed: strings)."""
    if tensor.data_type == TensorProto.STRING:
        return 0
    return (
        int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    )


def _without_external_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for onnx's checker, which would look for external files relative to the working
    directory: they were checked against the version directory above, and onnxruntime reads them."""
    if not any(external_data_helper.uses_external_data(t) for t in _tensors(proto)):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in _tensors(copy):
        if external_data_helper.uses_external_data(tensor):
            del tensor.external_data[:]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.dims[:]
            tensor.dims.append(0)
    return copy


def external_bytes(proto: onnx.ModelProto, base_dir: pathlib.Path | None) -> int:
    """The bytes of the model's external-data files (what its session keeps resident beside it)."""
    total = 0
    for tensor in _tensors(proto):
        if external_data_helper.uses_external_data(tensor) and base_dir is not None:
            info = external_data_helper.ExternalDataInfo(tensor)
            size = (base_dir / info.location).stat().st_size
            total += info.length if info.length is not None else size - (info.offset or 0)
    return total


def first_line(text: str) -> str:
    """The first line of an onnx or onnxruntime message (their later lines repeat the model)."""
    return text.strip().splitlines()[0] if text.strip() else text
