"""Export outputs: what a model head returns, and the signature it becomes.

Method names and input/output keys follow TF Serving (spec §6, §7.3), so Classify and Regress
work on signatures built over a parsing receiver:
- ClassificationOutput: input `inputs` (one DT_STRING vector of serialized Examples), outputs
  `classes` (string [batch, k]) and/or `scores` (float [batch, k]).
- RegressionOutput: input `inputs`, output `outputs` (float [batch] or [batch, 1]).
- PredictOutput: any named outputs over the receiver's own input aliases.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass

from exporter import dtypes
from exporter.errors import ExportError
from exporter.graph import Tensor
from exporter.signature import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from protos.tessera import bundle_pb2


def tensor_spec(t: Tensor) -> bundle_pb2.TensorSpec:
    shape = bundle_pb2.Shape()
    if t.shape is None:
        shape.unknown_rank = True
    else:
        shape.dim.extend(-1 if d is None else d for d in t.shape)
    return bundle_pb2.TensorSpec(name=t.name, dtype=dtypes.as_enum(t.dtype), shape=shape)


class ExportOutput(abc.ABC):
    """One head of a model, turned into a SignatureDef over a receiver's tensors."""

    @abc.abstractmethod
    def as_signature_def(self, receiver_tensors: Mapping[str, Tensor]) -> bundle_pb2.SignatureDef: ...


def _single_string_input(receiver_tensors: Mapping[str, Tensor], kind: str) -> Tensor:
    if len(receiver_tensors) != 1:
        raise ExportError(f"{kind} input must be a single string Tensor; got {sorted(receiver_tensors)}")
    (tensor,) = receiver_tensors.values()
    if tensor.dtype != dtypes.STRING:
        raise ExportError(f"{kind} input must be a single string Tensor; got {tensor}")
    return tensor


@dataclass(frozen=True)
class ClassificationOutput(ExportOutput):
    scores: Tensor | None = None
    classes: Tensor | None = None

    def __post_init__(self) -> None:
        if self.scores is None and self.classes is None:
            raise ExportError("ClassificationOutput needs scores, classes or both")
        if self.scores is not None and self.scores.dtype != dtypes.FLOAT:
            raise ExportError(f"Classification scores must be a float32 Tensor; got {self.scores}")
        if self.classes is not None and self.classes.dtype != dtypes.STRING:
            raise ExportError(f"Classification classes must be a string Tensor; got {self.classes}")
        for t in (self.scores, self.classes):
            if t is not None and t.shape is not None and len(t.shape) != 2:
                raise ExportError(f"Classification outputs must be [batch, k]; got {t}")

    def as_signature_def(self, receiver_tensors: Mapping[str, Tensor]) -> bundle_pb2.SignatureDef:
        sig = bundle_pb2.SignatureDef(method_name=CLASSIFY_METHOD)
        sig.inputs["inputs"].CopyFrom(tensor_spec(_single_string_input(receiver_tensors, "Classification")))
        if self.classes is not None:
            sig.outputs["classes"].CopyFrom(tensor_spec(self.classes))
        if self.scores is not None:
            sig.outputs["scores"].CopyFrom(tensor_spec(self.scores))
        return sig


@dataclass(frozen=True)
class RegressionOutput(ExportOutput):
    value: Tensor

    def __post_init__(self) -> None:
        if self.value.dtype != dtypes.FLOAT:
            raise ExportError(f"Regression output must be a float32 Tensor; got {self.value}")
        shape = self.value.shape
        if shape is not None and not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ExportError(f"Regression output must be [batch] or [batch, 1]; got {self.value}")

    def as_signature_def(self, receiver_tensors: Mapping[str, Tensor]) -> bundle_pb2.SignatureDef:
        sig = bundle_pb2.SignatureDef(method_name=REGRESS_METHOD)
        sig.inputs["inputs"].CopyFrom(tensor_spec(_single_string_input(receiver_tensors, "Regression")))
        sig.outputs["outputs"].CopyFrom(tensor_spec(self.value))
        return sig


@dataclass(frozen=True)
class PredictOutput(ExportOutput):
    outputs: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        if not self.outputs:
            raise ExportError("PredictOutput needs at least one output")
        for key, value in self.outputs.items():
            if not isinstance(key, str) or not key:
                raise ExportError(f"PredictOutput keys must be non-empty strings; got {key!r}")
            if not isinstance(value, Tensor):
                raise ExportError(f"PredictOutput value for {key!r} must be a Tensor; got {value!r}")

    def as_signature_def(self, receiver_tensors: Mapping[str, Tensor]) -> bundle_pb2.SignatureDef:
        sig = bundle_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for alias, tensor in receiver_tensors.items():
            sig.inputs[alias].CopyFrom(tensor_spec(tensor))
        for alias, tensor in self.outputs.items():
            sig.outputs[alias].CopyFrom(tensor_spec(tensor))
        return sig
