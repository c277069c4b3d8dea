"""Drop-in serving's import step: a SavedModel version maps to a bundle in a content-keyed cache,
imported once by a subprocess; everything else is left as it is."""

from __future__ import annotations

import asyncio
import pathlib
import shutil

import pytest

from exporter.errors import BundleError
from exporter.importers import savedmodel, savedmodel_cache
from exporter.importers.savedmodel_cache import content_key, resolve_version
from exporter.servable import load_servable
from tests.exporter.savedmodel_testlib import build, skip_without_the_extra

skip_without_the_extra()
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build(tmp_path_factory.mktemp("sm"), ["two"], do_import=False)["two"].base / "1"


def test_content_key_follows_the_content(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / "7"
    shutil.copytree(saved, copy)
    assert content_key(str(copy)) == content_key(str(saved))  # same files, another place
    (copy / "assets.extra").mkdir()
    (copy / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"x")
    assert content_key(str(copy)) != content_key(str(saved))


def test_other_platforms_and_bundles_are_left_as_they_are(saved: pathlib.Path, tmp_path: pathlib.Path) -> None:
    assert asyncio.run(resolve_version("onnx", str(saved), str(tmp_path))) == str(saved)
    bundle_path = asyncio.run(resolve_version("tensorflow", str(saved), str(tmp_path / "cache")))
    assert asyncio.run(resolve_version("tensorflow", bundle_path, str(tmp_path))) == bundle_path


def test_a_saved_model_is_imported_once_by_a_subprocess(saved: pathlib.Path, tmp_path: pathlib.Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    path = asyncio.run(resolve_version("tensorflow", str(saved), str(cache)))
    assert path == str(cache / content_key(str(saved)) / "1")
    servable = load_servable("tensorflow", path)
    assert set(servable.signatures["serving_default"].outputs) == {"probs", "value"}

    async def no_subprocess(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("imported twice")

    monkeypatch.setattr(savedmodel_cache.asyncio, "create_subprocess_exec", no_subprocess)
    assert asyncio.run(resolve_version("tensorflow", str(saved), str(cache))) == path


def test_a_failed_import_says_why(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "m" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x08\x01 definitely not a SavedModel")
    with pytest.raises(BundleError, match=r"is a TensorFlow SavedModel and importing it failed: .+"):
        asyncio.run(resolve_version("tensorflow", str(version), str(tmp_path / "cache")))
    assert not any((tmp_path / "cache").rglob("MANIFEST.pb"))


def test_without_the_extra_the_version_fails_saying_what_to_install(saved: pathlib.Path, tmp_path, monkeypatch) -> None:
    real = savedmodel.importlib.util.find_spec
    monkeypatch.setattr(savedmodel.importlib.util, "find_spec", lambda n: None if n == "tensorflow" else real(n))
    with pytest.raises(BundleError, match=r"pip install 'tessera-serving\[tensorflow\]'"):
        asyncio.run(resolve_version("tensorflow", str(saved), str(tmp_path / "cache")))
