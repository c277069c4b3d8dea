"""Trains two small scikit-learn models on data that ships with scikit-learn and exports them
through the scikit-learn importer (exporter.importers.sklearn: skl2onnx, one ONNX node in the bundle).

    python -m examples.export_models --base /tmp/models [--if-missing]
    python examples/export_models.py /tmp/models

writes ``<base>/iris/<version>`` and ``<base>/diabetes/<version>`` (the base may be a local path
or a pyarrow.fs URI such as ``s3://bucket/models``):

- iris: LogisticRegression on the four iris measurements.
  ``serving_default``: classify over serialized tf.Examples (input ``inputs``; float features
  sepal_length, sepal_width, petal_length, petal_width; outputs ``classes`` =
  setosa/versicolor/virginica and ``scores``). ``predict``: input ``x`` float32 [-1, 4]; outputs
  ``probabilities`` float32 [-1, 3] and ``class_ids`` int64 [-1].
- diabetes: Ridge on the ten diabetes features (named as in ``load_diabetes().feature_names``).
  ``serving_default``: regress over serialized tf.Examples. ``predict``: input ``x`` float32
  [-1, 10]; output ``predictions`` float32 [-1].

Each bundle carries warmup requests (predict logs for ``predict``, classify/regress logs for
``serving_default``). With ``--if-missing`` a model is exported only if its base path has no
version yet (``make serve`` uses this).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge

from exporter import storage, warmup
from exporter.export import export_model
from exporter.importers.sklearn import SklearnModel, convert
from protos.tessera import example_pb2

IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
WARMUP_ROWS = 3


@dataclass(frozen=True)
class Trained:
    """A fitted estimator, its imported model, and rows it was not trained on."""

    name: str
    estimator: Any
    model: SklearnModel
    x_test: np.ndarray


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    # Every fifth row held out: deterministic, and every iris class is in both halves.
    held_out = np.arange(n) % 5 == 0
    return ~held_out, held_out


def train_iris() -> Trained:
    data = load_iris()
    train, test = _split(len(data.target))
    estimator = LogisticRegression(max_iter=1000).fit(data.data[train], data.target[train])
    model = convert(estimator, feature_names=IRIS_FEATURES, class_labels=[str(n) for n in data.target_names])
    return Trained("iris", estimator, model, data.data[test])


def train_diabetes() -> Trained:
    data = load_diabetes()
    train, test = _split(len(data.target))
    estimator = Ridge(alpha=0.1).fit(data.data[train], data.target[train])
    model = convert(estimator, feature_names=list(data.feature_names))
    return Trained("diabetes", estimator, model, data.data[test])


def serialize_examples(names: Sequence[str], rows: np.ndarray) -> list[bytes]:
    """One tf.Example per row, with one float feature per column name."""
    out = []
    for row in rows:
        example = example_pb2.Example()
        for name, value in zip(names, row, strict=True):
            example.features.feature[name].float_list.value.append(float(value))
        out.append(example.SerializeToString())
    return out


def export_trained(trained: Trained, base: str, now: float | None = None) -> str:
    """Exports `trained` under `base` (serving_default over Examples, predict over `x`)."""
    model = trained.model
    classifier = model.labels is not None
    rows = trained.x_test[:WARMUP_ROWS]
    examples = serialize_examples(model.feature_names or (), rows)
    request_log = warmup.classify_log if classifier else warmup.regress_log
    logs = [
        request_log("serving_default", examples, model_name=trained.name),
        warmup.predict_log("predict", {"x": rows.astype(np.float32)}, model_name=trained.name),
    ]
    signatures = {
        "serving_default": (model.parsing_receiver_fn(), "classification" if classifier else "regression"),
        "predict": (model.raw_receiver_fn(), "predict"),
    }
    return export_model(
        base, model.model_fn, None, signatures=signatures,
        warmup_requests=[log.SerializeToString() for log in logs], now=now,
    )  # fmt: skip


def export_all(base: str, *, if_missing: bool = False, now: float | None = None) -> dict[str, str | None]:
    """Trains and exports both models under `base`; a model skipped by `if_missing` maps to None."""
    paths: dict[str, str | None] = {}
    for train in (train_iris, train_diabetes):
        trained = train()
        model_base = storage.join(base, trained.name)
        if if_missing and storage.list_versions(model_base, missing_ok=True):
            paths[trained.name] = None
            continue
        paths[trained.name] = export_trained(trained, model_base, now)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_path", nargs="?", help="base path or URI (or --base)")
    parser.add_argument("--base", dest="base_option", help="base path or URI holding <model>/<version>/")
    parser.add_argument("--if-missing", action="store_true", help="export a model only if it has no version yet")
    args = parser.parse_args(argv)
    base = args.base_option or args.base_path
    if not base:
        parser.error("give the base path: --base DIR or DIR")
    for name, path in export_all(base, if_missing=args.if_missing).items():
        print(f"{name}: {path if path else 'already exported, skipped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
