"""What the gRPC and REST gateway tests' fake ServingAPIs share: version resolution (labels,
specific, latest), and Classify/Regress answers computed from the examples as a replica would parse
them. Each harness subclasses `FakeServables` with its own models and Predict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cluster import errors
from cluster.requests import ClassifyResult, ExamplesRequest, ModelSpec, RegressResult, ResolvedSpec
from cluster.types import ServableState, VersionChoice
from protos.tensorflow.core.example import example_pb2


@dataclass
class FakeServables:
    """Models `MODELS`, each with `versions` (1 and 2) and labels stable=1 and canary=2; the model
    "crash" raises a plain exception (what a bug in the API would)."""

    MODELS: ClassVar[tuple[str, ...]] = ()

    ready: bool = False
    versions: dict[int, ServableState] = field(
        default_factory=lambda: {1: ServableState.AVAILABLE, 2: ServableState.AVAILABLE}
    )
    labels: dict[str, int] = field(default_factory=lambda: {"stable": 1, "canary": 2})
    seen: list[Any] = field(default_factory=list)

    def _resolve(self, spec: ModelSpec) -> ResolvedSpec:
        if spec.name == "crash":
            raise RuntimeError("the fake crashed on purpose")
        request = spec.version
        if spec.name not in self.MODELS:
            raise errors.NotFound(f"Servable not found for request: {request.describe(spec.name)}")
        if request.choice is VersionChoice.LABEL:
            if request.label not in self.labels:
                raise errors.InvalidArgument(f"Unrecognized servable version label: {request.label}")
            version = self.labels[request.label]
        elif request.choice is VersionChoice.SPECIFIC:
            version = request.version or 0
            if version not in self.versions:
                raise errors.NotFound(f"Servable not found for request: {request.describe(spec.name)}")
        else:
            version = max(self.versions)
        return ResolvedSpec(spec.name, version, spec.signature_key)

    @staticmethod
    def _xs(request: Any) -> np.ndarray:
        # Each example is parsed here, as a replica would (the context, sent once, merged into each:
        # context + example, the example winning): the gateway must have left them as bytes.
        parsed = [example_pb2.Example.FromString(request.context + raw) for raw in request.examples]
        return np.array([p.features.feature["x"].float_list.value[0] for p in parsed], dtype=np.float32)

    async def classify(self, request: ExamplesRequest) -> ClassifyResult:
        self.seen.append(request)
        spec = self._resolve(request.spec)
        x = self._xs(request)
        labels = np.array([[b"pos", b"neg"]] * len(x), dtype=object)
        return ClassifyResult(spec, labels, np.stack([x, 1 - x], axis=1))

    async def regress(self, request: ExamplesRequest) -> RegressResult:
        self.seen.append(request)
        return RegressResult(self._resolve(request.spec), 2 * self._xs(request))
