"""The servable seam: the loader registry by model_platform, and the numpy runtime as a Servable."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from exporter import servable
from exporter.errors import BundleError
from exporter.export import export_model
from exporter.runtime import Runtime
from exporter.signature import DEFAULT_SERVING_SIGNATURE
from tests.exporter.export_testlib import expected_probs, model_fn, raw


def test_a_bundle_loads_under_tf_servings_default_platform(tmp_path: pathlib.Path) -> None:
    path = export_model(str(tmp_path / "m"), model_fn, raw, now=1000)
    loaded = servable.load_servable("tensorflow", path)
    assert isinstance(loaded, Runtime)
    assert isinstance(loaded, servable.Servable)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    out = loaded.run(DEFAULT_SERVING_SIGNATURE, {"x": x})
    np.testing.assert_allclose(out["probabilities"], expected_probs(x), rtol=1e-6)
    assert loaded.resident_bytes == sum(a.nbytes for a in loaded.variables.values()) > 0
    loaded.close()


def test_an_empty_platform_means_tensorflow(tmp_path: pathlib.Path) -> None:
    path = export_model(str(tmp_path / "m"), model_fn, raw, now=1000)
    assert set(servable.load_servable("", path).signatures) == set(servable.load_servable("tessera", path).signatures)


def test_an_unknown_platform_names_the_known_ones() -> None:
    with pytest.raises(BundleError, match=r"unknown model_platform 'caffe'.*tensorflow"):
        servable.loader_for("caffe")
