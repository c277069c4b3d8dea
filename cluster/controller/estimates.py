"""A model's size before its first load: what the memory budget counts until a host reports it.

A replica host reports each slot's resident bytes once its versions are loaded
(`Servable.resident_bytes`), and the pool keeps the last report of each model. A model that was
never loaded has no report: its first placement would count 0 bytes, so a thousand models placed
at once would all land on hosts that have no room for them. TF Serving's loaders answer this with
`EstimateResources()`, an upper bound known before loading; ours is
`exporter.servable.estimate_resources` (the version's files on storage), summed over the versions
the model's version policy aspires to now (a replica holds every one of them). The measured
bytes replace the estimate as soon as a host reports them (`HostPool.bytes_of`).

Blocking I/O (a listing per model, local or through pyarrow.fs): run it in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cluster.config import ModelConfig
from cluster.serving.source import FileSystemSource
from exporter import servable

log = logging.getLogger("tessera.controller")


def estimate_model_bytes(model: ModelConfig) -> int:
    """The bytes `model`'s servables will hold once loaded, from the versions on storage now;
    0 when none is there yet (or its base path cannot be listed: the source reports that)."""
    report = FileSystemSource(model.name, model.base_path, model.version_policy).poll_once()
    return sum(servable.estimate_resources(path) for path in (report.aspired or {}).values())


def estimate_models(models: Iterable[ModelConfig]) -> dict[str, int]:
    """`estimate_model_bytes` of each model that has versions; a storage failure leaves a model
    out (unknown: it counts 0 until its first load reports, as before estimates)."""
    sizes: dict[str, int] = {}
    for model in models:
        try:
            size = estimate_model_bytes(model)
        except Exception as exc:  # noqa: BLE001 - an estimate is advice: placement goes on without it
            log.warning("model %s: no size estimate before its first load (%r)", model.name, exc)
            continue
        if size > 0:
            sizes[model.name] = size
    return sizes
