"""What the TensorFlow side of a SavedModel import hands to the bundle side: plain data.

Kept apart from `savedmodel_tf` so the bundle builder (and its tests) never import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.features import FeatureSpec
from exporter.signature import TensorInfo


@dataclass(frozen=True)
class Feed:
    """Where one input of the ONNX body comes from at serving time.

    `feature` is None for a signature input fed as is (`alias`); else the value is part `part`
    ('dense', 'indices', 'values' or 'dense_shape') of parsed feature `feature`.
    """

    alias: str | None = None
    feature: str | None = None
    part: str = "dense"


@dataclass(frozen=True)
class ConvertedSignature:
    """One signature of a SavedModel, ready to become a bundle signature.

    `inputs`/`outputs`: alias -> the SavedModel's tensor name, dtype and shape (as saved_model.pb
    declares them: what TF Serving reports). `onnx_model`: the serialized ONNX body. `feeds`: ONNX
    input name -> where its value comes from; `fetches`: output alias -> ONNX output name.
    `examples_alias`: the input holding serialized tf.Examples, parsed with `feature_spec` by
    Tessera's receiver (None: the signature does not parse).
    """

    key: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    onnx_model: bytes
    feeds: dict[str, Feed]
    fetches: dict[str, str]
    examples_alias: str | None = None
    feature_spec: dict[str, FeatureSpec] = field(default_factory=dict)
