"""Shared fixtures: where the TensorFlow-made reference vectors live."""

from __future__ import annotations

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _find_testdata() -> pathlib.Path:
    # The vectors live in shared/testdata beside the clone (CI lays shared/ next to it).
    for parent in [REPO_ROOT, *REPO_ROOT.parents]:
        candidate = parent / "shared" / "testdata"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/testdata not found beside the repository")


@pytest.fixture(scope="session")
def testdata_dir() -> pathlib.Path:
    return _find_testdata()
