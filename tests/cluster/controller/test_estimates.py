"""A model's size before its first load (EstimateResources): an upper bound of what its servables
report once loaded, from the aspired versions' files on storage."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from cluster.config import ModelConfig, VersionPolicy
from cluster.controller.estimates import estimate_model_bytes, estimate_models
from exporter import bundle, servable, storage
from tests.bundles_testlib import build_meta_graph, write_version
from tests.exporter.onnx_testlib import write_onnx_version


def _version_with_weights(base: pathlib.Path, version: int, weights: int) -> str:
    """A bundle version holding one extra float32 variable of `weights` values (and warmup data)."""
    meta, variables = build_meta_graph(2.0)
    variables = {**variables, "big": np.ones(weights, np.float32)}
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, variables, {}, {"tf_serving_warmup_requests": b"w" * 100_000})
        return storage.publish(staging, str(base), version)


def test_a_bundle_s_estimate_bounds_its_resident_bytes_from_above_and_closely(tmp_path: pathlib.Path) -> None:
    path = _version_with_weights(tmp_path / "m", 1, 250_000)  # 1 MB of weights
    loaded = servable.load_servable("tensorflow", path)
    try:
        resident = loaded.resident_bytes
    finally:
        loaded.close()
    estimate = servable.estimate_resources(path)
    assert resident >= 1_000_000
    # Files: the .npy data and headers, the graph, the manifest; not the 100 kB of warmup requests.
    assert resident <= estimate < resident + 50_000


def test_an_onnx_version_s_estimate_bounds_its_resident_bytes(tmp_path: pathlib.Path) -> None:
    root = write_onnx_version(tmp_path / "m", 1, 3.0, warmup_rows=1000)
    loaded = servable.load_servable("onnx", str(root))
    try:
        resident = loaded.resident_bytes
    finally:
        loaded.close()
    assert 0 < resident <= servable.estimate_resources(str(root)) < resident + 1_000


def test_a_model_s_estimate_sums_the_versions_its_policy_aspires_to(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "m"
    sizes = {v: servable.estimate_resources(_version_with_weights(base, v, 1000 * v)) for v in (1, 2, 3)}
    assert sizes[1] < sizes[2] < sizes[3]
    latest = ModelConfig("m", str(base))
    assert estimate_model_bytes(latest) == sizes[3]  # one replica holds the newest only
    both = ModelConfig("m", str(base), version_policy=VersionPolicy("specific", versions=(1, 3)))
    assert estimate_model_bytes(both) == sizes[1] + sizes[3]
    every = ModelConfig("m", str(base), version_policy=VersionPolicy("all"))
    assert estimate_model_bytes(every) == sum(sizes.values())


def test_models_without_versions_are_left_out_and_unknown(tmp_path: pathlib.Path) -> None:
    write_version(tmp_path / "ok", 1, 2.0)
    (tmp_path / "empty").mkdir()
    models = [ModelConfig(n, str(tmp_path / n)) for n in ("ok", "empty", "missing")]
    sizes = estimate_models(models)
    assert set(sizes) == {"ok"} and sizes["ok"] == servable.estimate_resources(str(tmp_path / "ok" / "1")) > 0
