"""The output directory of a job: refused if it holds anything (unless overwriting), written to a
staging place, published whole.

Layout of a published output: `part-<unit>.parquet` (or `.jsonl`) per work unit that produced
rows, `_errors/part-<unit>.jsonl` per unit that had bad rows, and `_SUCCESS` (Hadoop's and Spark's
marker, which their readers look for) holding the job's counts as JSON.

Publishing mirrors `exporter.storage.publish`: where the filesystem renames directories (local
disk, HDFS) the job writes into a hidden sibling `.<name>.staging-<uuid>` and renames it into place
when every unit is done, so the output either does not exist or is whole; a failed job deletes its
staging directory. On object stores (S3, GCS), where a rename is a copy of every object, the parts
are written in place and `_SUCCESS` last: an output without it is incomplete. With `--overwrite`,
the old output is deleted only once the new one is complete (just before the rename).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

import pyarrow.fs as pafs

from exporter import storage

SUCCESS_FILE = "_SUCCESS"
ERRORS_DIR = "_errors"  # "_": skipped by the readers of the output (pyarrow, Spark, Ray Data)
# The filesystems whose directory rename is one atomic step (as in exporter.storage).
_RENAMES_DIRECTORIES = frozenset({"local", "hdfs"})


class OutputExistsError(FileExistsError):
    """The output directory already holds files and --overwrite was not given."""


def _nonempty(fs: pafs.FileSystem, path: str) -> bool:
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        return True
    return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False)))


class OutputDir:
    """Where one job writes (see the module docstring). `location` is what workers write under:
    a path in the output's filesystem, reached from `source` (the output as given)."""

    def __init__(self, output: str, *, overwrite: bool = False) -> None:
        self.source = output
        self._fs, self._final = storage.resolve(output)
        self._final = self._final.rstrip("/")
        self._overwrite = overwrite
        if _nonempty(self._fs, self._final) and not overwrite:
            raise OutputExistsError(f"output {output} already exists and is not empty; pass --overwrite to replace it")
        self._staged = self._fs.type_name in _RENAMES_DIRECTORIES
        if self._staged:
            parent, _, name = self._final.rpartition("/")
            self.location = f"{parent}/.{name}.staging-{uuid.uuid4().hex}"
        else:
            if overwrite and _nonempty(self._fs, self._final):
                # No rename to hide behind: the old output goes first, and the new one counts as
                # complete only when _SUCCESS is written.
                self._fs.delete_dir_contents(self._final, missing_dir_ok=True)
            self.location = self._final
        self._fs.create_dir(self.location, recursive=True)

    def part_path(self, unit: int, extension: str) -> str:
        return f"{self.location}/part-{unit:05d}.{extension}"

    def errors_path(self, unit: int) -> str:
        return f"{self.location}/{ERRORS_DIR}/part-{unit:05d}.jsonl"

    def publish(self, counts: Mapping[str, int]) -> None:
        """Marks the output complete (`_SUCCESS` with `counts`) and moves it into place."""
        with self._fs.open_output_stream(f"{self.location}/{SUCCESS_FILE}") as out:
            out.write(json.dumps(dict(counts), sort_keys=True).encode() + b"\n")
        if not self._staged:
            return
        info = self._fs.get_file_info(self._final)
        if info.type != pafs.FileType.NotFound:
            if _nonempty(self._fs, self._final) and not self._overwrite:  # written while we ran
                raise OutputExistsError(
                    f"output {self.source} appeared while the job ran; its output is left at {self.location}")
            if info.type == pafs.FileType.Directory:
                self._fs.delete_dir(self._final)
            else:
                self._fs.delete_file(self._final)
        self._fs.move(self.location, self._final)

    def abort(self) -> None:
        """Removes what a failed job staged (in place on object stores: no `_SUCCESS` is written)."""
        if self._staged and self._fs.get_file_info(self.location).type != pafs.FileType.NotFound:
            self._fs.delete_dir(self.location)
