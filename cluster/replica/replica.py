"""One model's slot on a replica host: its loaded servables (version -> Servable) and the one execution path.

Plain Python, no Ray: the Ray actor in `actor.py` wraps it. Versions load through the loader
registry (`exporter.servable.load_servable`) by the model's platform, so the replica knows only
the `Servable` contract: data errors raise InvalidInputError, `run` is thread-safe, `close()` on
unload.

Every call carries a list of requests (coalesced by the gateway, or merged by the batch queues in
`batched.py`). Each is validated on its own (`validate`), so a bad request fails alone; `execute`
then merges the valid ones along dim 0, runs them once per group of compatible shapes, and, when
a merged batch fails because of its data, re-runs its members one by one so only the offending
request fails. That is the only place a failing request is isolated.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from cluster import errors, stats
from cluster.batching import merge
from cluster.replica.contract import RunResult, Target, Tasks
from cluster.replica.tasks import TaskPlanner, examples_of, run_tasks
from cluster.replica.warmup import WARMUP_FILE, replay_warmup
from exporter.errors import InvalidInputError
from exporter.servable import LoadOptions, Servable, load_servable
from exporter.signature import Signature, Tensors, check_feeds

log = logging.getLogger(__name__)

# Batches up to this many input elements run on the actor's event loop, not in a worker thread:
# the hop to a thread costs about as much as a small model's whole computation (measured ~0.9 ms
# on 2 busy cores, when a whole request, then sent as a Ray actor call, took ~1.3 ms).
INLINE_ELEMENTS = 1 << 16
T = TypeVar("T")


def is_small(*feeds: Tensors) -> bool:
    """True when the inputs are small enough to compute inline (see INLINE_ELEMENTS)."""
    return sum(a.size for f in feeds for a in f.values()) <= INLINE_ELEMENTS


async def compute(fn: Callable[[], T], *feeds: Tensors) -> T:
    """Runs `fn` inline for small inputs, else in a worker thread (the loop keeps accepting calls)."""
    if is_small(*feeds):
        return fn()
    return await asyncio.to_thread(fn)


class Replica:
    """The servables of one model in this process, and the code that runs requests on them."""

    def __init__(
        self,
        model_name: str,
        *,
        enable_warmup: bool = True,
        cache_dir: str | None = None,
        options: LoadOptions | None = None,
    ) -> None:
        self.model_name = model_name
        self.enable_warmup = enable_warmup
        self.options = options if options is not None else LoadOptions(cache_dir=cache_dir)
        self._servables: dict[int, Servable] = {}
        self._task_planners: dict[int, TaskPlanner] = {}  # version -> its MultiInference tasks
        self._lock = threading.Lock()
        self.batch_sizes = stats.Histogram(stats.BATCH_SIZE_BUCKETS)
        self.warmup_seconds = stats.Histogram(stats.LATENCY_BUCKETS)

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self, version: int, path: str, platform: str = "tensorflow") -> dict[str, Signature]:
        """Loads, validates and warms up one version with `platform`'s loader; returns its
        signatures. Raises on failure (the version is then not loaded)."""
        loaded = self._servables.get(version)
        if loaded is not None:
            return dict(loaded.signatures)
        servable = load_servable(platform, path, self.options)
        try:
            self._warm_up(version, servable)
        except BaseException:
            servable.close()
            raise
        with self._lock:
            current = self._servables.setdefault(version, servable)
        if current is not servable:  # loaded twice at once (a bring-up racing a load): keep one
            servable.close()
        return dict(current.signatures)

    def _warm_up(self, version: int, servable: Servable) -> None:
        extra = servable.assets_extra_dir
        if not self.enable_warmup or extra is None or not (extra / WARMUP_FILE).exists():
            return
        started = time.perf_counter()
        count = replay_warmup(servable, extra / WARMUP_FILE)
        self.warmup_seconds.observe(time.perf_counter() - started)
        log.info("model %s version %d: %d warmup records replayed", self.model_name, version, count)

    def unload(self, version: int) -> None:
        """Forgets `version` and closes it; a run already holding it finishes first (the caller
        drains queues before unloading)."""
        with self._lock:
            servable = self._servables.pop(version, None)
            self._task_planners.pop(version, None)
        if servable is not None:
            servable.close()

    def loaded_versions(self) -> list[int]:
        return sorted(self._servables)

    # -- requests ----------------------------------------------------------------------------
    def servable(self, version: int) -> Servable:
        """The loaded servable of `version`, or NotFound."""
        servable = self._servables.get(version)
        if servable is None:
            raise errors.NotFound(f"Servable not found for request: Specific({self.model_name}, {version})")
        return servable

    def resolve(self, version: int, signature_key: str) -> tuple[Servable, Signature]:
        """The servable and signature a request names, or NotFound / FailedPrecondition."""
        servable = self.servable(version)
        signature = servable.signatures.get(signature_key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{signature_key}" not found.')
        return servable, signature

    @staticmethod
    def validate(signature: Signature, feeds: Tensors) -> None:
        """InvalidArgument unless `feeds` fit the signature and share one batch dimension."""
        try:
            check_feeds(signature, feeds)
        except InvalidInputError as e:
            raise errors.InvalidArgument(str(e)) from None
        merge.row_count(feeds)

    def run(
        self,
        version: int,
        signature_key: Target,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
    ) -> list[RunResult]:
        """Validates and runs every request; returns, per request, its outputs or its error."""
        if isinstance(signature_key, tuple):
            return self.run_tasks(version, signature_key, requests)
        try:
            servable, signature = self.resolve(version, signature_key)
        except errors.ServingError as e:
            return [e] * len(requests)
        results: list[RunResult] = [errors.Internal("request was not run")] * len(requests)
        valid: list[int] = []
        for i, feeds in enumerate(requests):
            try:
                self.validate(signature, feeds)
                valid.append(i)
            except errors.ServingError as e:
                results[i] = e
        executed = self.execute(servable, signature_key, [requests[i] for i in valid], output_filter)
        for i, result in zip(valid, executed, strict=True):
            results[i] = result
        return results

    def run_tasks(self, version: int, keys: Tasks, requests: Sequence[Tensors]) -> list[RunResult]:
        """A MultiInference call: per request, every task's outputs on one parse of its examples
        per distinct feature spec (`cluster.replica.tasks`), or the error that failed it."""
        try:
            servable = self.servable(version)
            planner = self._task_planners.get(version)
            if planner is None:
                with self._lock:  # never for a version `unload` has just forgotten (NotFound)
                    planner = self._task_planners.setdefault(version, TaskPlanner(self.servable(version)))
            plan = planner.plan(keys)
        except errors.ServingError as e:
            return [e] * len(requests)
        results: list[RunResult] = []
        for feeds in requests:
            try:
                examples = examples_of(feeds)
                self.batch_sizes.observe(len(examples))
                results.append(run_tasks(servable, plan, examples))
            except InvalidInputError as e:
                results.append(errors.InvalidArgument(str(e)))
            except errors.ServingError as e:
                results.append(e)
            except Exception as e:  # noqa: BLE001 - a fault of the servable: the request fails, the replica stays
                log.exception("model %s: tasks %s failed", self.model_name, keys)
                results.append(errors.Internal(f"the servable failed: {e}" if str(e) else "the servable failed"))
        return results

    def execute(
        self,
        servable: Servable,
        signature_key: str,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
    ) -> list[RunResult]:
        """Runs validated requests merged per group of compatible shapes (see the module doc)."""
        results: list[RunResult] = [errors.Internal("request was not run")] * len(requests)
        for group in merge.group_compatible(requests, pad_variable_length=False):
            self._run_group(servable, signature_key, requests, group, output_filter, results)
        return results

    def _run_group(
        self,
        servable: Servable,
        signature_key: str,
        requests: Sequence[Tensors],
        members: list[int],
        output_filter: Sequence[str],
        results: list[RunResult],
    ) -> None:
        batch = merge.merge_inputs([requests[i] for i in members])
        self.batch_sizes.observe(sum(batch.row_counts))
        try:
            outputs: Tensors = servable.run(signature_key, batch.inputs, list(output_filter) or None)
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
        except Exception as e:  # noqa: BLE001 - a fault of the servable: its requests fail, the replica stays
            log.exception("model %s: signature %s failed", self.model_name, signature_key)
            for i in members:
                # The class name stays in the log above: clients get the message only.
                results[i] = errors.Internal(f"the servable failed: {e}" if str(e) else "the servable failed")
            return
        # A data-dependent error (say, an id out of range) in a merged batch: run each request on
        # its own so only the offending one fails.
        for i in members:
            self._run_group(servable, signature_key, requests, [i], output_filter, results)

    # -- observability -----------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """This process's memory in bytes: rss, pss (shared pages divided among sharers), and
        what the loaded versions say they keep resident (`Servable.resident_bytes`)."""
        stats = self.memory_of_process()
        stats["variables"] = sum(s.resident_bytes for s in list(self._servables.values()))
        return stats

    @staticmethod
    def memory_of_process() -> dict[str, int]:
        """This process's pid, rss and pss in bytes (0 where /proc does not tell)."""
        stats = {"pid": os.getpid(), "rss": 0, "pss": 0}
        rollup = pathlib.Path("/proc/self/smaps_rollup")
        if rollup.exists():
            for line in rollup.read_text().splitlines():
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    stats[key.lower()] = int(rest.split()[0]) * 1024
        return stats
