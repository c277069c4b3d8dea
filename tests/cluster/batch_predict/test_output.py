"""The output directory: refused when it holds files, staged, published whole or not at all."""

from __future__ import annotations

import json
import pathlib

import pytest

from cluster.batch_predict.output import SUCCESS_FILE, OutputDir, OutputExistsError


def _write(out: OutputDir, name: str, text: str = "x") -> None:
    pathlib.Path(out.location, name).write_text(text)


def test_publish_moves_the_staged_output_into_place(tmp_path: pathlib.Path) -> None:
    final = tmp_path / "out"
    out = OutputDir(str(final))
    assert not final.exists() and pathlib.Path(out.location).name.startswith(".out.staging-")
    _write(out, "part-00000.parquet")
    assert not final.exists()  # nothing that looks like an output until it is whole
    out.publish({"rows_written": 3})
    assert sorted(p.name for p in final.iterdir()) == [SUCCESS_FILE, "part-00000.parquet"]
    assert json.loads((final / SUCCESS_FILE).read_text()) == {"rows_written": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_output_is_refused_unless_overwriting(tmp_path: pathlib.Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    OutputDir(str(final)).abort()  # an empty directory is fine
    (final / "part-00000.parquet").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        OutputDir(str(final))
    out = OutputDir(str(final), overwrite=True)
    _write(out, "part-00001.parquet", "new")
    assert (final / "part-00000.parquet").read_text() == "old"  # kept until the new one is whole
    out.publish({})
    assert sorted(p.name for p in final.iterdir()) == [SUCCESS_FILE, "part-00001.parquet"]


def test_a_failed_job_leaves_nothing(tmp_path: pathlib.Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    _write(out, "part-00000.parquet")
    out.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_output_written_meanwhile_is_not_clobbered(tmp_path: pathlib.Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "theirs").write_text("x")
    with pytest.raises(OutputExistsError, match="appeared while the job ran"):
        out.publish({})
    assert (tmp_path / "out" / "theirs").exists()
