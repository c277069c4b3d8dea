"""A replica of one model: its loaded servables (version -> Runtime) and batched execution.

Plain Python, no Ray: the Ray actor in `actor.py` wraps it. Every call carries a list of requests
(the gateway coalesces concurrent requests into one call); they are validated one by one, so a
bad request fails alone, then merged along dim 0 and run once per group of compatible shapes.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cluster import errors, stats
from cluster.batching import merge
from exporter import bundle as bundle_io
from exporter import tensor_codec
from exporter.errors import InvalidInputError
from exporter.runtime import Runtime
from exporter.signature import DEFAULT_SERVING_SIGNATURE, Signature, check_feeds
from exporter.warmup import WARMUP_FILE, read_warmup

log = logging.getLogger(__name__)

# Batches up to this many input elements run on the actor's event loop, not in a worker thread:
# the hop to a thread costs about as much as a small model's whole computation (measured ~0.9 ms
# on 2 busy cores, against ~1.3 ms for the whole Ray call).
INLINE_ELEMENTS = 1 << 16
Outputs = dict[str, np.ndarray]
RunResult = list[Outputs | errors.ServingError]


def is_small(*feeds: Mapping[str, np.ndarray]) -> bool:
    """True when the inputs are small enough to compute inline (see INLINE_ELEMENTS)."""
    return sum(a.size for f in feeds for a in f.values()) <= INLINE_ELEMENTS


class Replica:
    """The servables of one model in this process, and the code that runs requests on them."""

    def __init__(self, model_name: str, *, enable_warmup: bool = True, cache_dir: str | None = None) -> None:
        self.model_name = model_name
        self.enable_warmup = enable_warmup
        self.cache_dir = cache_dir
        self._servables: dict[int, Runtime] = {}
        self._lock = threading.Lock()
        self.batch_sizes = stats.Histogram(stats.BATCH_SIZE_BUCKETS)
        self.warmup_seconds = stats.Histogram(stats.LATENCY_BUCKETS)

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self, version: int, path: str) -> dict[str, Signature]:
        """Reads, validates and warms up one version; returns its signatures. Raises on failure."""
        if version in self._servables:
            return self._servables[version].signatures
        bundle = bundle_io.read_bundle(path, cache_dir=self.cache_dir)
        runtime = Runtime.from_bundle(bundle)
        if self.enable_warmup and bundle.assets_extra_dir is not None:
            warmup_path = bundle.assets_extra_dir / WARMUP_FILE
            if warmup_path.exists():
                started = time.perf_counter()
                count = replay_warmup(runtime, warmup_path)
                self.warmup_seconds.observe(time.perf_counter() - started)
                log.info("model %s version %d: %d warmup records replayed", self.model_name, version, count)
        with self._lock:
            self._servables[version] = runtime
        return runtime.signatures

    def unload(self, version: int) -> None:
        with self._lock:
            self._servables.pop(version, None)

    def loaded_versions(self) -> list[int]:
        return sorted(self._servables)

    # -- requests ----------------------------------------------------------------------------
    def runtime(self, version: int) -> Runtime:
        """The loaded runtime of `version`, or NotFound."""
        runtime = self._servables.get(version)
        if runtime is None:
            raise errors.NotFound(f"Servable not found for request: Specific({self.model_name}, {version})")
        return runtime

    def resolve(self, version: int, signature_key: str) -> tuple[Runtime, Signature]:
        """The runtime and signature a request names, or NotFound / FailedPrecondition."""
        runtime = self.runtime(version)
        signature = runtime.signatures.get(signature_key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_key}" not found.')
        return runtime, signature

    def run(
        self,
        version: int,
        signature_key: str,
        requests: Sequence[Mapping[str, np.ndarray]],
        output_filter: Sequence[str] = (),
    ) -> RunResult:
        """Runs every request; returns, per request, its outputs or the error that refused it."""
        try:
            runtime, signature = self.resolve(version, signature_key)
        except errors.ServingError as e:
            return [e] * len(requests)
        results: RunResult = [errors.Internal("request was not run")] * len(requests)
        valid: list[int] = []
        for i, feeds in enumerate(requests):
            try:
                check_feeds(signature, feeds)
                merge.row_count(feeds)
                valid.append(i)
            except (InvalidInputError, errors.InvalidArgument) as e:
                results[i] = errors.InvalidArgument(str(e))
        group_inputs = [requests[i] for i in valid]
        for group in merge.group_compatible(group_inputs, pad_variable_length=False):
            members = [valid[g] for g in group]
            self._run_group(runtime, signature_key, requests, members, output_filter, results)
        return results

    def _run_group(
        self,
        runtime: Runtime,
        signature_key: str,
        requests: Sequence[Mapping[str, np.ndarray]],
        members: list[int],
        output_filter: Sequence[str],
        results: RunResult,
    ) -> None:
        batch = merge.merge_inputs([requests[i] for i in members])
        self.batch_sizes.observe(sum(batch.row_counts))
        try:
            outputs = runtime.run(signature_key, batch.inputs, output_filter or None)
            for i, out in zip(members, merge.split_outputs(outputs, batch.row_counts), strict=True):
                results[i] = out
            return
        except InvalidInputError as e:
            if len(members) == 1:
                results[members[0]] = errors.InvalidArgument(str(e))
                return
        except errors.ServingError as e:
            for i in members:
                results[i] = e
            return
        # A data-dependent error (say, an id out of range) in a merged batch: run each request on
        # its own so only the offending one fails.
        for i in members:
            self._run_group(runtime, signature_key, requests, [i], output_filter, results)

    # -- observability -----------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """This process's memory in bytes: rss, pss (shared pages divided among sharers), and the
        size of the memory-mapped variables of the loaded versions."""
        stats = {"pid": os.getpid(), "rss": 0, "pss": 0}
        rollup = pathlib.Path("/proc/self/smaps_rollup")
        if rollup.exists():
            for line in rollup.read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    stats[key.lower()] = int(rest.split()[0]) * 1024
        stats["variables"] = sum(
            int(a.nbytes) for rt in self._servables.values() for a in rt.variables.values()
        )
        return stats


def replay_warmup(runtime: Runtime, path: pathlib.Path, iterations: int = 1) -> int:
    """Replays a TF Serving warmup file against a just-loaded runtime; any failure fails the load.

    Only each record's request is used; model_spec.name/version are ignored, signature_name is not
    (spec §11). Returns the number of records replayed.
    """
    logs = read_warmup(path)
    for _ in range(max(iterations, 1)):
        for record in logs:
            kind = record.WhichOneof("log_type")
            if kind == "predict_log":
                request = record.predict_log.request
                feeds = {alias: tensor_codec.proto_to_array(t) for alias, t in request.inputs.items()}
                key = request.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
                runtime.run(key, feeds, list(request.output_filter) or None)
            elif kind in ("classify_log", "regress_log"):
                request = getattr(record, kind).request
                key = request.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
                runtime.run(key, {"inputs": serialized_examples(request.input)})
            elif kind == "multi_inference_log":
                request = record.multi_inference_log.request
                examples = serialized_examples(request.input)
                for task in request.tasks:
                    runtime.run(task.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE, {"inputs": examples})
            else:
                raise errors.Unimplemented(f"Unsupported log_type for warmup: {kind}")
    return len(logs)


def serialized_examples(serialized_input: Any) -> np.ndarray:
    """A SerializedInput as the DT_STRING vector fed to a classify/regress graph (spec §4.3)."""
    kind = serialized_input.WhichOneof("kind")
    if kind == "example_list":
        items = list(serialized_input.example_list.examples)
    elif kind == "example_list_with_context":
        ctx = serialized_input.example_list_with_context
        items = [ctx.context + e for e in ctx.examples]
    else:
        items = []
    if not items:
        raise errors.InvalidArgument("Input is empty.")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
