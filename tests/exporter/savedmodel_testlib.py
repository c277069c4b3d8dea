"""SavedModels for the importer's tests, without TensorFlow in the test process.

`build(out, names)` runs ``python -m tests.exporter.savedmodel_models`` (TensorFlow lives only in
that process: its protobuf messages clash with the gateway's in one process), which builds each
named model, imports it as `tessera import` does and records TensorFlow's answers. `Built` reads
what it wrote back: base paths, bundle paths or import errors, declared signatures and cases.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def skip_without_the_extra() -> None:
    """Skips the calling test module unless TensorFlow and tf2onnx are installed (looked up, never
    imported: pytest.importorskip would import TensorFlow into this process)."""
    import importlib.util

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the tensorflow extra ({', '.join(missing)} missing)", allow_module_level=True)


def decode(value: dict) -> np.ndarray:
    if value["dtype"] == "bytes":
        out = np.empty(len(value["data"]), dtype=object)
        out[:] = [base64.b64decode(v) for v in value["data"]]
        return out.reshape(value["shape"])
    return np.array(value["data"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])


@dataclass(frozen=True)
class Case:
    signature: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Built:
    name: str
    base: pathlib.Path  # the SavedModel base path (version 1)
    bundle: str | None  # the imported bundle's version directory
    error: str | None  # the import's error, if it refused the model
    declared: dict  # key -> {"method", "inputs": {alias: [dtype, dims]}, "outputs": ...}
    cases: dict[str, Case]


def build(out: pathlib.Path, names: Sequence[str], *, do_import: bool = True, timeout: float = 400) -> dict[str, Built]:
    """Builds (and imports) the named models in a TensorFlow subprocess; see the module docstring."""
    command = [sys.executable, "-m", "tests.exporter.savedmodel_models", str(out), *names]
    if not do_import:
        command.append("--no-import")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        name: Built(
            name, pathlib.Path(entry["base"]), entry.get("bundle"), entry.get("error"), entry["declared"],
            {
                case: Case(c["signature"], {a: decode(v) for a, v in c["inputs"].items()},
                           {a: decode(v) for a, v in c["outputs"].items()})
                for case, c in entry.get("cases", {}).items()
            },
        )  # fmt: skip
        for name, entry in manifest.items()
    }


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    assert set(got) == set(want)
    for alias, value in want.items():
        assert np.asarray(got[alias]).shape == value.shape, alias
        if value.dtype == object:
            assert list(np.asarray(got[alias]).reshape(-1)) == list(value.reshape(-1)), alias
        else:
            np.testing.assert_allclose(got[alias], value, atol=atol, rtol=0, err_msg=alias)


def import_with_cli(source: str, dest: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`tessera import SOURCE DEST` as a user runs it."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cluster.cli", "import", source, dest],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
