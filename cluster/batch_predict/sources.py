"""Input files: listing them and cutting them into work units (`reading` reads a unit).

Inputs are files, directories (every file under them whose name does not start with "." or "_",
as Spark and Hadoop skip `_SUCCESS` and `.crc` files) or a `*` pattern in the last path component,
on a local disk or any pyarrow.fs URI. Formats are Cloud ML Engine's: Parquet, CSV (with a header
line), JSON lines and TFRecord files of tf.Examples.

A work unit is one file, or for Parquet a run of row groups of at most `unit_rows` rows, so one large
Parquet file still spreads over every worker (only the footers are read to plan them).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from exporter import storage

FORMATS = ("parquet", "csv", "json", "tfrecord")


class InputError(ValueError):
    """The inputs cannot be found or read (no files, an unknown format)."""


@dataclass(frozen=True)
class Unit:
    """One piece of work: a file (or some of its row groups), named as a worker can open it."""

    index: int
    source: str  # the input as given (path or URI, with its ?query), for the worker's filesystem
    path: str  # the file's path inside that filesystem
    row_groups: tuple[int, ...] = ()  # Parquet: the unit's row groups (empty: the whole file)
    first_row: int = 0  # the file's row at which the unit starts


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def list_files(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(source, path) of every input file, sorted within each input; InputError if one is missing."""
    found: list[tuple[str, str]] = []
    for source in inputs:
        fs, path = storage.resolve(source)
        parent, _, pattern = path.rstrip("/").rpartition("/")
        if "*" in pattern:
            infos = fs.get_file_info(pafs.FileSelector(parent or "/", recursive=False))
            files = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern)]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                files = [path]
            elif info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                root = path.rstrip("/") + "/"
                files = [i.path for i in infos if i.type == pafs.FileType.File
                         and all(_visible(p) for p in i.path[len(root):].split("/"))]
            else:
                raise InputError(f"input {source!r} does not exist")
        if not files:
            raise InputError(f"input {source!r} holds no files")
        found.extend((source, f) for f in sorted(files))
    return found


def plan_units(files: Sequence[tuple[str, str]], file_format: str, unit_rows: int) -> list[Unit]:
    """The work units of `files`: one per file, Parquet files cut at row groups (footers are read)."""
    units: list[Unit] = []
    for source, path in files:
        if file_format != "parquet":
            units.append(Unit(len(units), source, path))
            continue
        fs, _ = storage.resolve(source)
        with fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        run: list[int] = []
        rows = start = 0
        for group in range(meta.num_row_groups):
            group_rows = meta.row_group(group).num_rows
            if run and rows + group_rows > unit_rows:
                units.append(Unit(len(units), source, path, tuple(run), start))
                run, start, rows = [], start + rows, 0
            run.append(group)
            rows += group_rows
        if run:
            units.append(Unit(len(units), source, path, tuple(run), start))
    return units
