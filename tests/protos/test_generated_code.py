"""The committed generated code matches the .proto sources."""

from __future__ import annotations

import pathlib

from protos import generate


def test_generated_code_has_not_drifted(tmp_path: pathlib.Path) -> None:
    generate.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = generate.REPO_ROOT / rel
        assert committed.exists(), f"{rel} is not committed: run `make protos`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} drifted: run `make protos`"


def test_no_top_level_tensorflow_package() -> None:
    for name in ("tensorflow", "tensorflow_serving"):
        assert not (generate.REPO_ROOT / name).exists()
