"""Shared fixtures: the TensorFlow-made reference vectors (in the repo) and KubeRay's CRDs (beside it)."""

from __future__ import annotations

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTDATA = REPO_ROOT / "tests" / "testdata"


@pytest.fixture(scope="session")
def testdata_dir() -> pathlib.Path:
    return TESTDATA


@pytest.fixture(scope="session")
def kuberay_crds_dir() -> pathlib.Path:
    """KubeRay's CRDs from `shared/k8s` beside the clone; the test skips where that folder is absent."""
    for parent in REPO_ROOT.parents:
        candidate = parent / "shared" / "k8s"
        if (candidate / "ray.io_rayclusters.yaml").is_file():
            return candidate
    pytest.skip("KubeRay's CRDs (shared/k8s beside the repository) are not here: schema validation skipped")
