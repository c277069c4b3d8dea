"""One batch-prediction worker: loads the servable once, then turns work units into output parts.

A plain class (Ray wraps it as an actor in `cluster.batch_predict.predict`; tests run it
in-process). A unit is read in batches, each batch fed to the signature
(`cluster.batch_predict.feeding`), the outputs appended to the passthrough columns as typed columns
(`cluster.batch_predict.columns`) and written to the unit's part file. A batch the model refuses
(InvalidInputError) is split until the refused rows are found, so only the rows at fault fail; they
and the undecodable input go to the unit's errors file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.batch_predict.columns import to_arrow
from cluster.batch_predict.feeding import Feeder, InputSelection, takes_examples
from cluster.batch_predict.parts import PartWriter
from cluster.batch_predict.reading import BadRow, read_unit
from cluster.batch_predict.sources import Unit
from cluster.batch_predict.tfrecord import RECORD_COLUMN
from exporter import storage
from exporter.errors import BundleError, InvalidInputError
from exporter.servable import LoadOptions, Servable, load_servable
from exporter.signature import DEFAULT_SERVING_SIGNATURE, Tensors


@dataclass(frozen=True)
class BatchJob:
    """What to run: the model (a version directory or a base path: its newest version), the
    signature, how its inputs come from the columns, and the formats."""

    model_path: str
    model_platform: str = "tensorflow"
    signature: str = DEFAULT_SERVING_SIGNATURE
    selection: InputSelection = field(default_factory=InputSelection)
    output_filter: tuple[str, ...] = ()
    batch_size: int = 8192
    input_format: str = "parquet"
    output_format: str = "parquet"
    drop_passthrough: bool = False
    num_cpus: float = 1.0  # per worker: the runtime's threads follow it


@dataclass
class Counts:
    rows_read: int = 0  # every input row seen, decodable or not
    rows_written: int = 0
    rows_failed: int = 0  # decoded, refused by the model
    bad_rows: int = 0  # undecodable input
    # Not counts of rows, so not compared, and not in _SUCCESS: where the workers' time went.
    cpu_s: float = field(default=0.0, compare=False)  # CPU time of the workers' processes (all threads) on units
    busy_s: float = field(default=0.0, compare=False)  # wall time the workers spent on units

    def rows(self) -> dict[str, int]:
        """The row counts (what `_SUCCESS` records)."""
        return {"rows_read": self.rows_read, "rows_written": self.rows_written, "rows_failed": self.rows_failed,
                "bad_rows": self.bad_rows}

    def add(self, other: Counts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def version_path(model_path: str) -> str:
    """`model_path` if it names a version directory (or holds no versions), else its newest version."""
    name = model_path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if (storage.parse_version(name) or 0) > 0:
        return model_path
    try:
        versions = storage.list_versions(model_path)
    except BundleError:
        raise BundleError(f"model path {model_path} does not exist") from None
    if not versions:
        return model_path  # a model directory without versions: the loader decides
    newest = versions[max(versions)].rsplit("/", 1)[-1]
    return storage.join(model_path, newest)


class BatchWorker:
    """Loads `job`'s servable; `process` runs one unit into `<location>/part-<unit>.<ext>`."""

    def __init__(self, job: BatchJob) -> None:
        self._job = job
        threads = max(1, math.ceil(job.num_cpus))
        self._servable: Servable = load_servable(
            job.model_platform, version_path(job.model_path), LoadOptions(intra_op_threads=threads)
        )
        signature = self._servable.signatures.get(job.signature)
        if signature is None:
            raise BundleError(f"the model has no signature {job.signature!r}; it has {sorted(self._servable.signatures)}")
        self._signature = signature
        self._feeders: dict[pa.Schema, Feeder] = {}
        # Arrow's own threads (Parquet decoding and encoding) follow the worker's CPUs.
        pa.set_cpu_count(threads)
        # pyarrow imports pandas (when installed, ~1 s) the first time it converts numpy: at start,
        # with the model load, rather than inside the first unit.
        pa.array(np.zeros(1))

    def ready(self) -> bool:
        return True

    def process(self, unit: Unit, output_source: str, part_path: str, errors_path: str) -> Counts:
        """Runs `unit`; writes its rows to `part_path` and its bad rows to `errors_path` (paths in the
        filesystem of `output_source`), each only if there is something to write."""
        fs, _ = storage.resolve(output_source)
        counts = Counts()
        cpu, started = time.process_time(), time.perf_counter()
        outputs = self._job.output_filter or tuple(self._signature.outputs)
        writer = PartWriter(self._job.output_format, fs, part_path, outputs)
        errors: Any = None
        row = unit.first_row
        try:
            for chunk in read_unit(unit, self._job.input_format, self._job.batch_size,
                                   keep_records=takes_examples(self._signature)):
                failed: list[BadRow] = []
                if chunk.batch.num_rows:
                    table = self._predict(chunk.batch, unit.path, row, failed)
                    row += chunk.batch.num_rows
                    if table.num_rows:
                        writer.write(table)
                counts.rows_read += chunk.batch.num_rows + len(chunk.bad)
                counts.bad_rows += len(chunk.bad)
                counts.rows_failed += len(failed)
                counts.rows_written += chunk.batch.num_rows - len(failed)
                if chunk.bad or failed:
                    if errors is None:
                        fs.create_dir(errors_path.rsplit("/", 1)[0], recursive=True)
                        errors = fs.open_output_stream(errors_path)
                    errors.write(b"".join(_error_line(b) for b in (*chunk.bad, *failed)))
        except BaseException:
            writer.close(complete=False)  # the job fails: what is still buffered is not written
            raise
        else:
            writer.close()
        finally:
            if errors is not None:
                errors.close()
        counts.cpu_s = time.process_time() - cpu
        counts.busy_s = time.perf_counter() - started
        return counts

    def _feeder(self, schema: pa.Schema) -> Feeder:
        feeder = self._feeders.get(schema)
        if feeder is None:
            feeder = Feeder(self._servable, self._signature, schema.names, self._job.selection,
                            self._job.output_filter)
            outputs = set(self._job.output_filter or self._signature.outputs)
            clash = sorted(outputs & set(self._passthrough(schema.names, feeder)))
            if clash:
                raise InvalidInputError(
                    f"input column {clash[0]!r} has the name of an output; pass --drop_passthrough or rename it"
                )
            feeder = self._feeders[schema] = feeder
        return feeder

    def _passthrough(self, names: list[str], feeder: Feeder) -> list[str]:
        if self._job.drop_passthrough:
            return []
        used = set(feeder.used) | {RECORD_COLUMN}
        return [n for n in names if n not in used]

    def _predict(self, batch: pa.RecordBatch, path: str, first_row: int, failed: list[BadRow]) -> pa.Table:
        """The output rows of `batch` (passthrough columns, then outputs); refused rows go to `failed`."""
        feeder = self._feeder(batch.schema)
        keep = np.ones(batch.num_rows, dtype=bool)
        try:
            outputs = feeder.run(batch)
        except InvalidInputError:
            outputs = self._row_by_row(feeder, batch, path, first_row, failed, keep)
        kept = batch if keep.all() else batch.filter(pa.array(keep))
        names = self._passthrough(batch.schema.names, feeder)
        columns = {n: kept.column(n) for n in names}
        columns.update((alias, to_arrow(value)) for alias, value in sorted(outputs.items()))
        return pa.Table.from_pydict(columns)

    def _row_by_row(self, feeder: Feeder, batch: pa.RecordBatch, path: str, first_row: int,
                    failed: list[BadRow], keep: np.ndarray) -> Tensors:
        """Finds the refused rows of a refused batch by halving it (down to 32 rows, then row by
        row): a few bad rows in a big batch cost a few runs, not one run per row."""
        pieces: list[Tensors] = []

        def split(start: int, stop: int) -> None:
            if stop - start > 32:
                middle = (start + stop) // 2
                for lo, hi in ((start, middle), (middle, stop)):
                    try:
                        pieces.append(feeder.run(batch.slice(lo, hi - lo)))
                    except InvalidInputError:
                        split(lo, hi)
                return
            for i in range(start, stop):
                try:
                    pieces.append(feeder.run(batch.slice(i, 1)))
                except InvalidInputError as exc:
                    keep[i] = False
                    failed.append(BadRow(path, first_row + i, str(exc), _raw(batch.slice(i, 1)), unit="row"))

        split(0, batch.num_rows)  # pieces are appended in row order
        if not pieces:
            return {}
        return {alias: np.concatenate([p[alias] for p in pieces]) for alias in pieces[0]}


def _raw(row: pa.RecordBatch) -> str:
    values = {k: v for k, v in row.to_pylist()[0].items() if k != RECORD_COLUMN}
    return json.dumps(values, default=lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))[:1000]


def _error_line(bad: BadRow) -> bytes:
    record = {"path": bad.path, bad.unit: bad.position, "error": bad.error}
    if bad.raw:
        record["raw"] = bad.raw
    return json.dumps(record).encode() + b"\n"
