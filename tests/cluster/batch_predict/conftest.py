"""The example bundles (iris: classify + predict; diabetes: regress + predict), exported once."""

from __future__ import annotations

import pathlib

import pytest

from examples.export_models import Trained, export_trained, train_diabetes, train_iris


@pytest.fixture(scope="session")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, Trained]:
    base = tmp_path_factory.mktemp("models") / "iris"
    trained = train_iris()
    export_trained(trained, str(base))
    return base, trained


@pytest.fixture(scope="session")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, Trained]:
    base = tmp_path_factory.mktemp("models") / "diabetes"
    trained = train_diabetes()
    export_trained(trained, str(base))
    return base, trained
