"""Shared fixtures: the TensorFlow-made reference vectors (in the repo), KubeRay's CRDs (beside it) and a
real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Iterator

import pytest

from tests.s3_testlib import S3

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


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A moto server on a free loopback port with one bucket, `models`; AWS credentials are set to
    test values in the environment while it runs (pyarrow reads them for s3:// URIs)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", "test")
            env.setenv("AWS_SECRET_ACCESS_KEY", "test")
            env.setenv("AWS_EC2_METADATA_DISABLED", "true")
            endpoint = f"127.0.0.1:{port}"
            fs = pafs.S3FileSystem(
                endpoint_override=endpoint, scheme="http", access_key="test", secret_key="test",
                region="us-east-1", allow_bucket_creation=True,
            )
            fs.create_dir("models")
            yield S3(endpoint, fs, "models")
    finally:
        server.stop()
