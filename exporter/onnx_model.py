"""The one wrapper around onnxruntime: open one session on a checked ONNX model, run it.

Used by the loader of Triton's layout (`exporter.loaders.onnx`) and by the ONNX op inside bundles;
nothing else runs onnxruntime (an import-linter contract keeps it so).

Contract:
- `exporter.onnx_check.check_model` runs before onnxruntime sees a byte (see there); custom-op
  libraries are never registered, so loading runs no code from the artifact.
- Inputs and outputs must be tensors. A sequence or map output (skl2onnx's default ZipMap of class
  probabilities) is refused at load with the converter option that produces a tensor instead:
  silently reshaping a list of dicts would guess at the class order.
- One `InferenceSession` per model, created once and shared by every thread: onnxruntime's `run`
  is thread-safe. Its intra-op threads are `LoadOptions.intra_op_threads` (the replica sets them
  from the CPUs it was scheduled with, so two replicas on one node do not fight over every core),
  or else this process's CPU affinity; inter-op threads 1 (the graph runs sequentially: requests
  are parallel across batches, not inside one).
- `run` raises `InvalidInputError` for failures caused by the data (a wrong dtype, rank or
  dimension; a node that refuses its values); any other failure propagates as a fault.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from exporter import dtypes
from exporter.errors import BundleError, InvalidInputError
from exporter.onnx_check import check_model, external_bytes, first_line
from exporter.servable import LoadOptions
from exporter.signature import TensorInfo

# onnxruntime's type strings ("tensor(float)") -> our DType numbering.
_ORT_TYPES: Final[dict[str, dtypes.DType]] = {
    "tensor(float)": dtypes.FLOAT,
    "tensor(double)": dtypes.DOUBLE,
    "tensor(float16)": dtypes.HALF,
    "tensor(int8)": dtypes.INT8,
    "tensor(int16)": dtypes.INT16,
    "tensor(int32)": dtypes.INT32,
    "tensor(int64)": dtypes.INT64,
    "tensor(uint8)": dtypes.UINT8,
    "tensor(uint16)": dtypes.UINT16,
    "tensor(uint32)": dtypes.UINT32,
    "tensor(uint64)": dtypes.UINT64,
    "tensor(bool)": dtypes.BOOL,
    "tensor(string)": dtypes.STRING,
    "tensor(complex64)": dtypes.COMPLEX64,
    "tensor(complex128)": dtypes.COMPLEX128,
}
_ZIPMAP_ADVICE: Final = (
    "convert without ZipMap so probabilities are one float tensor: skl2onnx "
    "to_onnx(model, ..., options={id(model): {'zipmap': False}}) (onnxmltools: the same option)"
)
# Data-caused failures: onnxruntime's INVALID_ARGUMENT (dtype, rank, a fixed dimension) and a
# kernel that refuses the values it was given (index out of range, shapes that do not broadcast).
_KERNEL_FAILURE: Final = "Non-zero status code returned while running"


def default_intra_op_threads(num_cpus: float | None = None) -> int:
    """Threads for one session: the CPUs this process was given (its affinity, or the `num_cpus`
    it was scheduled with, whichever is fewer), at least 1."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    if num_cpus is not None and num_cpus > 0:
        available = min(available, int(num_cpus))
    return max(1, available)


def _session_options(options: LoadOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads or default_intra_op_threads()
    so.inter_op_num_threads = options.inter_op_threads or 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: a spinning pool burns the CPUs that the
    # replica's event loop and the other replicas on the node need between batches.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Fatal only: a kernel that refuses a request's values is raised to the caller (and answered
    # as INVALID_ARGUMENT); logging it here too would write a line per bad request.
    so.log_severity_level = 4
    return so


def _tensor_info(arg: ort.NodeArg, kind: str) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        advice = f"; {_ZIPMAP_ADVICE}" if arg.type.startswith(("seq(", "map(")) else ""
        raise BundleError(f"{kind} {arg.name!r} is {arg.type}, not a tensor this server can carry{advice}")
    shape = arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
    return TensorInfo(arg.name, dtype, dims)


class OnnxModel:
    """One checked ONNX model and its session (see the module docstring for the contract)."""

    def __init__(
        self, model: bytes, *, base_dir: pathlib.Path | None = None, options: LoadOptions | None = None
    ) -> None:
        proto = check_model(model, base_dir)
        so = _session_options(options or LoadOptions())
        if base_dir is not None:
            # External data of a model given as bytes is resolved against this folder.
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(base_dir.resolve())
            )
        try:
            session = ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises Fail/InvalidGraph/RuntimeException
            raise BundleError(f"onnxruntime cannot load the model: {first_line(str(e))}") from None
        self.inputs: Mapping[str, TensorInfo] = MappingProxyType(
            {a.name: _tensor_info(a, "input") for a in session.get_inputs()}
        )
        self.outputs: Mapping[str, TensorInfo] = MappingProxyType(
            {a.name: _tensor_info(a, "output") for a in session.get_outputs()}
        )
        self._string_outputs = frozenset(n for n, i in self.outputs.items() if i.dtype == dtypes.STRING)
        self.resident_bytes: int = len(model) + external_bytes(proto, base_dir)
        self._session: ort.InferenceSession | None = session

    def run(
        self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Runs the session on `feeds` (graph input name -> array); returns the named outputs (all
        by default) by graph output name. DT_STRING values are bytes in and bytes out."""
        session = self._session
        if session is None:
            raise RuntimeError("the ONNX model is closed")
        names = list(output_names) if output_names else list(self.outputs)
        for name in names:
            if name not in self.outputs:
                raise InvalidInputError(f"output {name!r} is not an output of the ONNX model")
        try:
            values = session.run(names, {k: _to_ort(k, v) for k, v in feeds.items()})
        except ort_state.InvalidArgument as e:
            raise InvalidInputError(first_line(_strip_ort(str(e)))) from None
        except (ort_state.Fail, ort_state.RuntimeException) as e:
            if _KERNEL_FAILURE in str(e):
                raise InvalidInputError(first_line(_strip_ort(str(e)))) from None
            raise
        out = {}
        for name, value in zip(names, values, strict=True):
            array = np.asarray(value)
            if name in self._string_outputs:
                array = _to_bytes(array)
            out[name] = array
        return out

    def close(self) -> None:
        """Drops the session; onnxruntime frees its memory and threads when the last run returns."""
        self._session = None


def _to_ort(name: str, array: np.ndarray) -> np.ndarray:
    """onnxruntime's strings are UTF-8 text read from str objects (bytes objects would be turned
    into their repr); ours hold bytes, as TensorFlow's do."""
    if array.dtype != object:
        return array
    out = np.empty(array.shape, dtype=object)
    try:
        out.reshape(-1)[:] = [
            v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)
        ]
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"input {name!r}: onnxruntime strings are UTF-8 text; got bytes that are not ({e})"
        ) from None
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
    return out


def _strip_ort(message: str) -> str:
    """'[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions ...' -> the last part."""
    return message.split(" : ", 3)[-1] if message.startswith("[ONNXRuntimeError]") else message
