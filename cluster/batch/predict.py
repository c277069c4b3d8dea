"""`tessera batch-predict`: run a bundle's signature over Parquet, CSV or JSON-lines files with
Ray Data, and write the inputs with the outputs appended as Parquet.

Each Ray Data worker loads the bundle once (memory-mapped, as a replica does) and runs batches
through the same numpy runtime the serving cluster uses.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray

from cluster.batch.feeding import as_column, feeds_for
from exporter import bundle as bundle_io
from exporter import storage
from exporter.errors import BundleError
from exporter.runtime import Runtime

READERS = {"parquet": "read_parquet", "csv": "read_csv", "json": "read_json"}


@dataclass(frozen=True)
class BatchJob:
    model_path: str  # a version directory, or a base path (its newest version)
    signature: str = "serving_default"
    input_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    output_filter: tuple[str, ...] = ()
    batch_size: int = 1024


def version_path(model_path: str) -> str:
    """`model_path` itself if it holds a bundle, else the newest version under it."""
    try:
        bundle_io.read_meta_graph(model_path)
        return model_path
    except BundleError:
        versions = storage.list_versions(model_path)
        if not versions:
            raise BundleError(f"no bundle at {model_path} and no versions under it") from None
        return storage.join(model_path, pathlib.PurePosixPath(versions[max(versions)]).name)


class BundlePredictor:
    """A Ray Data callable class: loads the bundle once per worker, runs each batch."""

    def __init__(self, job: BatchJob) -> None:
        self._job = job
        self._runtime = Runtime.from_bundle(bundle_io.read_bundle(version_path(job.model_path)))
        if job.signature not in self._runtime.signatures:
            raise BundleError(f"the bundle has no signature {job.signature!r}: {sorted(self._runtime.signatures)}")
        self._signature = self._runtime.signatures[job.signature]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, object]:
        feeds = feeds_for(self._signature, batch, self._job.input_columns)
        outputs = self._runtime.run(self._job.signature, feeds, list(self._job.output_filter) or None)
        return {**batch, **{name: as_column(value) for name, value in outputs.items()}}


def run(job: BatchJob, inputs: Sequence[str], output: str, *, file_format: str = "parquet",
        concurrency: int = 1, num_cpus: float = 1.0) -> int:
    """Runs the job over `inputs` (files or directories), writes Parquet under `output`; returns rows."""
    reader = getattr(ray.data, READERS[file_format])
    dataset = reader(list(inputs)).map_batches(
        BundlePredictor,
        fn_constructor_args=(job,),
        batch_size=job.batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=num_cpus,
    )
    dataset.write_parquet(output)
    return int(ray.data.read_parquet(output).count())


def _input_columns(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    out = {}
    for spec in specs:
        alias, sep, columns = spec.partition(":")
        if not sep or not alias or not columns:
            raise argparse.ArgumentTypeError(f"--input_columns takes ALIAS:col1,col2,...; got {spec!r}")
        out[alias] = tuple(c for c in columns.split(",") if c)
    return out


def main(argv: Sequence[str]) -> int:
    """`tessera batch-predict`."""
    from cluster.app import init_ray
    from cluster.config import ServeOptions

    parser = argparse.ArgumentParser(prog="tessera batch-predict", description=__doc__)
    parser.add_argument("--model_path", required=True, help="a version directory or a base path (local or URI)")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--input", action="append", required=True, help="file or directory (repeatable)")
    parser.add_argument("--output", required=True, help="directory for the Parquet output")
    parser.add_argument("--format", choices=sorted(READERS), default="parquet", dest="file_format")
    parser.add_argument("--input_columns", action="append", default=[],
                        help="ALIAS:col1,col2,... stacks columns into one input (repeatable)")
    parser.add_argument("--output_filter", action="append", default=[])
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=1, help="workers, each with the bundle loaded")
    parser.add_argument("--ray_address", default=None)
    args = parser.parse_args(list(argv))
    try:
        columns = _input_columns(args.input_columns)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    job = BatchJob(args.model_path, args.signature, columns, tuple(args.output_filter), args.batch_size)
    started = init_ray(ServeOptions(ray_address=args.ray_address))
    try:
        rows = run(job, args.input, args.output, file_format=args.file_format, concurrency=args.concurrency)
    finally:
        if started:
            ray.shutdown()
    print(f"{rows} rows written to {args.output}")
    return 0
