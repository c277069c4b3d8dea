"""The servable: the one interface between serving and the runtimes that compute (TF Serving's
Loader and servable, MLServer's MLModel), and the registry of loaders keyed by `model_platform`.

Contract of a `Servable` (what the replica, batch prediction, `tessera inspect` and `tessera run`
rely on, and all that they know of a runtime):

- `signatures` is fixed for the servable's life: key -> `Signature`. Feeds are keyed by the
  signature's input aliases, outputs by its output aliases.
- `run(signature_key, feeds, output_filter)` may be called from several threads at once, and must be
  safe to: one servable serves every batch of every request. `feeds` have already passed
  `check_feeds` against the signature (the caller validates once, where the request enters); the
  first dimension of every input and output is the batch. A failure caused by the data (a bad
  tf.Example, an id out of range, a shape the graph refuses) raises `InvalidInputError`: the replica
  relies on it to re-run a merged batch request by request, so one bad request fails alone. Any
  other exception is a fault of the servable, not of the request.
- `resident_bytes` is what keeping the servable loaded costs in memory (weights, sessions), so the
  cluster can place and evict servables by memory. Before a version is loaded, `estimate_resources`
  gives an upper bound of it from the version's files (TF Serving's `Loader::EstimateResources`).
- `close()` releases what the servable holds; `run` is not called after it.
- Loading never executes code from the artifact: no pickle, no Python from the model directory;
  only graphs of known ops (our registry, or ONNX operators) are accepted. A loader refuses a
  directory it cannot load with a `BundleError` whose message names what is wrong and, where the
  directory holds another format, the platform or command that serves it.

A servable may also be a `ParsesExamples`: it then tells the feature spec of a signature's parsing
receiver and runs that signature from features already parsed. Batch prediction feeds columns
through it without building Examples; a replica's MultiInference parses its examples once for every
task whose receiver has the same spec.

Loaders are registered by platform name and imported only when first used, so a process that never
loads an ONNX model never imports onnxruntime.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from exporter import local_versions, storage
from exporter.errors import BundleError
from exporter.features import FeatureSpec
from exporter.signature import Signature, Tensors


@runtime_checkable
class Servable(Protocol):
    """A loaded model version that can compute (see the module docstring for the contract)."""

    @property
    def signatures(self) -> Mapping[str, Signature]: ...

    def run(
        self, signature_key: str, feeds: Mapping[str, object], output_filter: Sequence[str] | None = None
    ) -> Tensors: ...

    @property
    def resident_bytes(self) -> int: ...

    @property
    def assets_extra_dir(self) -> pathlib.Path | None:
        """The local `assets.extra/` of the version (TF Serving's warmup requests), if it has one."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ParsesExamples(Protocol):
    """A servable that can run an Example-taking signature from its receiver's parsed features."""

    def example_features(self, key: str) -> Mapping[str, FeatureSpec] | None:
        """The feature spec of signature `key`'s parsing receiver, or None where it has none."""
        ...

    def run_features(
        self, signature_key: str, features: Mapping[str, object], output_filter: Sequence[str] | None = None
    ) -> Tensors:
        """`run` from the features `exporter.example_parser.parse_example` gives for the receiver's
        spec: the same outputs as `run` on the serialized Examples."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    """How to load: where remote versions are cached, and the runtime's threads per session."""

    cache_dir: str | None = None
    # Threads one session may use inside an op (onnxruntime's intra_op_num_threads). 0: the
    # loader's default, derived from the CPUs this process was given.
    intra_op_threads: int = 0
    inter_op_threads: int = 0


Loader = Callable[[str, LoadOptions], Servable]

# platform -> "module:function". TF Serving's default platform is "tensorflow": our own bundles are
# served under it (and SavedModels, once imported). Triton spells ONNX "onnxruntime_onnx".
_LOADERS: dict[str, str] = {
    "tensorflow": "exporter.loaders.bundle:load",
    "tessera": "exporter.loaders.bundle:load",
    "onnx": "exporter.loaders.onnx:load",
    "onnxruntime_onnx": "exporter.loaders.onnx:load",
}
# Platforms whose versions commit themselves: MANIFEST.pb is written last, and a version without
# one is refused. A source watches the others' versions until their files stop changing.
_MANIFEST_PLATFORMS: frozenset[str] = frozenset({"tensorflow", "tessera", ""})


def register_loader(platform: str, target: str) -> None:
    """Registers `target` ("module:function", a `Loader`) as the loader of `platform`."""
    _LOADERS[platform] = target


def commits_with_manifest(platform: str) -> bool:
    """True when a version of `platform` is complete once its MANIFEST.pb exists (Tessera bundles)."""
    return platform in _MANIFEST_PLATFORMS


def platforms() -> list[str]:
    return sorted(_LOADERS)


def _loader_module(platform: str) -> tuple[Any, str]:
    target = _LOADERS.get(platform or "tensorflow")
    if target is None:
        raise BundleError(f"unknown model_platform {platform!r}; this server knows {', '.join(platforms())}")
    module, _, function = target.partition(":")
    return importlib.import_module(module), function


def loader_for(platform: str) -> Loader:
    """The loader of `platform`; BundleError naming the known platforms if there is none."""
    module, function = _loader_module(platform)
    loader: Loader = getattr(module, function)
    return loader


def load_servable(platform: str, path: str, options: LoadOptions | None = None) -> Servable:
    """Loads one version directory (a local path or pyarrow.fs URI) with `platform`'s loader.

    Whatever the platform, a local version that links outside its base path (the directory itself,
    or a file under it) is refused first (`local_versions.check_inside_base`)."""
    loader = loader_for(platform)
    local_versions.check_inside_base(path)
    return loader(path, options or LoadOptions())


def estimate_resources(path: str) -> int:
    """TF Serving's `Loader::EstimateResources` for memory: an upper bound of the `resident_bytes`
    a version will report once loaded, known without loading it (the cluster places a model that
    was never loaded by it). It is the bytes of the version's files on storage (a local path or a
    pyarrow.fs URI), `assets.extra/` left out (warmup requests are replayed at load, not kept).
    Every loader here keeps at most its files resident: the numpy runtime memory-maps
    `variables/*.npy` (data plus a small header on disk) and parses the graph; an ONNX session
    counts its model's bytes and external data; ops holding a session count their asset files.
    0 for a directory that holds no file (or does not exist); a storage failure raises."""
    return sum(size for rel, size, _ in storage.list_tree(path) if not rel.startswith(_NOT_RESIDENT))


_NOT_RESIDENT: tuple[str, ...] = ("assets.extra/",)


def describe(platform: str, path: str, options: LoadOptions | None = None) -> Mapping[str, Signature]:
    """The signatures of one version without serving it (`tessera inspect`): the loader module's
    `describe(path, options)` where it has one (a bundle's reads only its manifest and graph),
    else the signatures of a load, closed at once. Refuses what `load_servable` refuses."""
    module, function = _loader_module(platform)
    local_versions.check_inside_base(path)
    describe_fn: Callable[[str, LoadOptions], Mapping[str, Signature]] | None = getattr(module, "describe", None)
    if describe_fn is not None:
        return describe_fn(path, options or LoadOptions())
    servable = getattr(module, function)(path, options or LoadOptions())
    try:
        return dict(servable.signatures)
    finally:
        servable.close()
