"""Requests and results as the domain sees them: numpy arrays and plain values, no protos.

The gateway's converters are the only code that turns TF Serving's messages (gRPC or REST JSON)
into these and back. `ServingAPI` is what the gateway calls; `cluster.app` provides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol

import numpy as np

from cluster import errors
from cluster.types import VersionRequest, VersionStatus
from exporter.signature import DEFAULT_SERVING_SIGNATURE

if TYPE_CHECKING:
    from cluster.config import ServerConfig
    from exporter.signature import Signature


Method = Literal["classify", "regress"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Which servable and signature a request is for. An empty signature name means serving_default."""

    name: str
    version: VersionRequest = field(default_factory=VersionRequest.latest)
    signature_name: str = ""

    @property
    def signature_key(self) -> str:
        return self.signature_name or DEFAULT_SERVING_SIGNATURE


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """What answered: the model name, the version actually served and the resolved signature key."""

    name: str
    version: int
    signature_key: str  # resolved: never empty where a signature answered ("" for metadata)


@dataclass(frozen=True, slots=True)
class PredictRequest:
    spec: ModelSpec
    inputs: Mapping[str, np.ndarray]
    output_filter: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() seconds; None: no deadline
    # The signature the inputs' aliases, dtypes and shapes were checked against where the request
    # entered (the gRPC gateway checks them before decoding), or None: then the dispatcher checks
    # them. Checked once: the dispatcher does not repeat a check made against the signature it
    # resolves to.
    checked: Signature | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class PredictResult:
    spec: ResolvedSpec
    outputs: Mapping[str, np.ndarray]


# The feed under which a Classify/Regress call carries its context Example to the replica (a
# 1-element string vector), beside the signature's one string input. Not a valid Predict alias:
# the gateway refuses aliases a signature does not have, so only the examples path sends it.
EXAMPLE_CONTEXT_FEED: Final = "tessera:example_context"


@dataclass(frozen=True, slots=True)
class ExamplesRequest:
    """Classify or Regress: serialized tf.Examples and the serialized context Example they share.

    `context` (b"": none) is TF Serving's ExampleListWithContext context. It travels once, not
    copied onto each example: the replica merges it into every example as it parses them (the
    example's features win), so a big context costs its size once, whatever the number of examples.
    """

    spec: ModelSpec
    examples: Sequence[bytes]
    deadline: float | None = None
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    """Per example, the classes: labels [n, k] (bytes) and/or scores [n, k] (float32).

    The shapes are checked when a result is made (TF Serving's messages), the one check of them:
    the converters that write a result to gRPC or JSON trust it.
    """

    spec: ResolvedSpec
    labels: np.ndarray | None
    scores: np.ndarray | None

    def __post_init__(self) -> None:
        labels, scores = self.labels, self.scores
        if labels is None and scores is None:
            raise errors.Internal("a classify result has neither classes nor scores")
        for name, tensor in (("classes", labels), ("scores", scores)):
            if tensor is not None and tensor.ndim != 2:
                raise errors.InvalidArgument(
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)} for {name}"
                )
        if labels is not None and scores is not None and labels.shape != scores.shape:
            raise errors.InvalidArgument(
                f"Tensors class and score should match in shape: {list(labels.shape)} vs. {list(scores.shape)}"
            )

    @property
    def rows(self) -> int:
        reference = self.labels if self.labels is not None else self.scores
        assert reference is not None  # checked when made
        return int(reference.shape[0])


@dataclass(frozen=True, slots=True)
class RegressResult:
    """Per example, one value: float32 [n] or [n, 1], checked when made (the converters trust it)."""

    spec: ResolvedSpec
    values: np.ndarray

    def __post_init__(self) -> None:
        values = self.values
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise errors.InvalidArgument(
                f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
            )


@dataclass(frozen=True, slots=True)
class InferenceTask:
    spec: ModelSpec
    method: str  # the method_name a client sent; validated by the service


@dataclass(frozen=True, slots=True)
class MultiInferenceRequest:
    tasks: Sequence[InferenceTask]
    examples: Sequence[bytes]
    deadline: float | None = None
    context: bytes = b""  # as ExamplesRequest.context


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    spec: ResolvedSpec  # signature_name is "" here: metadata is for the whole version
    signatures: Mapping[str, Signature]


class ServingAPI(Protocol):
    """What the gateway (gRPC and REST) needs from the cluster. Errors are cluster.errors classes."""

    async def predict(self, request: PredictRequest) -> PredictResult: ...

    async def classify(self, request: ExamplesRequest) -> ClassifyResult: ...

    async def regress(self, request: ExamplesRequest) -> RegressResult: ...

    async def multi_inference(self, request: MultiInferenceRequest) -> list[ClassifyResult | RegressResult]: ...

    async def model_metadata(self, spec: ModelSpec) -> ModelMetadata: ...

    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]: ...

    async def reload_config(self, config: ServerConfig) -> None: ...

    def is_ready(self) -> bool:
        """True once every configured model has at least one AVAILABLE version."""
        ...
