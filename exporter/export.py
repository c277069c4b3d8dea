"""Export: join a serving input receiver, a model and its heads, and write one bundle version.

The model is a `model_fn(g, features) -> {head name: ExportOutput}`; the receiver a
`receiver_fn(g) -> ServingInputReceiver` (exporter.receivers). As with a TF Estimator export:

- default mode: the receiver is built first, then the model on its features; every head becomes a
  signature keyed by its head name. The default signature `serving_default` is `default_head`, else
  the head the model itself named `serving_default`, else the only head. A head that cannot sit on
  the receiver (a Classify/Regress head needs one string input) is left out, as TF leaves it out;
  the default head cannot be left out.
- alternative mode (`signatures={key: (receiver_fn, head name)}`): each distinct receiver is built
  once in its own name scope and the model built on its features. Variables are shared by name
  (GraphBuilder.variable returns the existing node), so the weights are stored once.

Writing: the bundle is written to a local staging directory, loaded back (a bundle that does not
load is never published), then published as `<base>/<Unix seconds>` with `exporter.storage.publish`
(atomic, manifest last, never overwrites), and old versions are removed with `keep`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import bundle, storage, warmup
from exporter.errors import BundleError, ExportError, GraphError
from exporter.graph import GraphBuilder
from exporter.outputs import ExportOutput
from exporter.receivers import ReceiverFn, ServingInputReceiver
from exporter.runtime import Runtime
from exporter.signature import DEFAULT_SERVING_SIGNATURE
from protos.tessera import bundle_pb2, warmup_pb2

ModelFn = Callable[[GraphBuilder, Mapping[str, Any]], Mapping[str, ExportOutput]]
SERVE_TAG = "serve"
_log = logging.getLogger(__name__)
_PUBLISH_ATTEMPTS = 5  # a concurrent exporter may take our version between choosing and publishing


@dataclass(frozen=True)
class BuiltModel:
    """The graph (with its variables and assets) and the MetaGraph of an export, before writing."""

    graph: GraphBuilder
    meta_graph: bundle_pb2.MetaGraph

    def runtime(self, scratch_dir: str | os.PathLike[str] | None = None) -> Runtime:
        """An in-memory Runtime over the built graph, without writing a bundle.

        A graph with assets (vocabularies) needs `scratch_dir`: its assets are written there.
        """
        assets_dir = None
        if self.graph.assets:
            if scratch_dir is None:
                raise ExportError("this graph has assets: pass a scratch_dir to write them to")
            assets_dir = pathlib.Path(scratch_dir)
            assets_dir.mkdir(parents=True, exist_ok=True)
            for name, content in self.graph.assets.items():
                (assets_dir / name).write_bytes(content)
        return Runtime(self.meta_graph, self.graph.variables, assets_dir)


def _signature(head: ExportOutput, receiver: ServingInputReceiver) -> bundle_pb2.SignatureDef:
    if not isinstance(head, ExportOutput):
        raise ExportError(f"a model_fn head must be an ExportOutput, got {head!r}")
    return head.as_signature_def(receiver.receiver_tensors)


def _call_model(model_fn: ModelFn, g: GraphBuilder, receiver: ServingInputReceiver) -> Mapping[str, ExportOutput]:
    heads = model_fn(g, receiver.features)
    if not isinstance(heads, Mapping) or not heads:
        raise ExportError(f"model_fn must return a non-empty mapping of head name -> ExportOutput, got {heads!r}")
    return heads


def _default_signatures(
    g: GraphBuilder, model_fn: ModelFn, receiver_fn: ReceiverFn, default_head: str | None
) -> dict[str, bundle_pb2.SignatureDef]:
    receiver = receiver_fn(g)
    heads = _call_model(model_fn, g, receiver)
    if default_head is not None and default_head not in heads:
        raise ExportError(f"default_head {default_head!r} is not one of the model's heads {sorted(heads)}")
    sigs: dict[str, bundle_pb2.SignatureDef] = {}
    for name, head in heads.items():
        try:
            sigs[name] = _signature(head, receiver)
        except ExportError as e:
            if name == default_head:
                raise ExportError(f"default head {name!r} does not fit the receiver: {e}") from None
            _log.info("head %r left out: it does not fit the receiver (%s)", name, e)
    if not sigs:
        raise ExportError(f"no head of {sorted(heads)} fits the receiver {sorted(receiver.receiver_tensors)}")
    if default_head is not None:
        sigs[DEFAULT_SERVING_SIGNATURE] = sigs[default_head]
    elif DEFAULT_SERVING_SIGNATURE not in sigs:
        if len(sigs) != 1:
            raise ExportError(
                f"several heads {sorted(sigs)} and none is the default: pass default_head= "
                f"or name one head {DEFAULT_SERVING_SIGNATURE!r}"
            )
        sigs[DEFAULT_SERVING_SIGNATURE] = next(iter(sigs.values()))
    return sigs


def _scope_name(key: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", key) or "receiver"
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _alternative_signatures(
    g: GraphBuilder, model_fn: ModelFn, signatures: Mapping[str, tuple[ReceiverFn, str]]
) -> dict[str, bundle_pb2.SignatureDef]:
    built: dict[int, tuple[ServingInputReceiver, Mapping[str, ExportOutput]]] = {}
    scopes: set[str] = set()
    sigs: dict[str, bundle_pb2.SignatureDef] = {}
    for key, entry in signatures.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            raise ExportError(f"signature {key!r}: expected (receiver_fn, head name), got {entry!r}")
        receiver_fn, head_name = entry
        if id(receiver_fn) not in built:
            # Its own scope keeps two receivers' placeholders and parse nodes apart; the model's
            # variables escape the scope, so every receiver shares one copy of the weights.
            with g.name_scope(_scope_name(key, scopes)):
                receiver = receiver_fn(g)
                built[id(receiver_fn)] = (receiver, _call_model(model_fn, g, receiver))
        receiver, heads = built[id(receiver_fn)]
        if head_name not in heads:
            raise ExportError(f"signature {key!r}: the model has no head {head_name!r} (heads: {sorted(heads)})")
        try:
            sigs[key] = _signature(heads[head_name], receiver)
        except ExportError as e:
            raise ExportError(f"signature {key!r}: head {head_name!r} does not fit its receiver: {e}") from None
    if DEFAULT_SERVING_SIGNATURE not in sigs:
        _log.warning("export has no %r signature: requests without a signature name will fail", DEFAULT_SERVING_SIGNATURE)
    return sigs


def build_model(
    model_fn: ModelFn,
    serving_input_receiver_fn: ReceiverFn | None,
    *,
    signatures: Mapping[str, tuple[ReceiverFn, str]] | None = None,
    default_head: str | None = None,
) -> BuiltModel:
    """Builds the graph and MetaGraph of an export in memory (what `export_model` writes)."""
    g = GraphBuilder()
    if signatures:
        if default_head is not None:
            raise ExportError("default_head applies to the default mode; with signatures= name 'serving_default'")
        sigs = _alternative_signatures(g, model_fn, signatures)
    else:
        if serving_input_receiver_fn is None:
            raise ExportError("a serving_input_receiver_fn or signatures= is required")
        sigs = _default_signatures(g, model_fn, serving_input_receiver_fn, default_head)
    meta = bundle_pb2.MetaGraph(format_version=bundle.FORMAT_VERSION, graph=g.to_proto(), tags=[SERVE_TAG])
    for key in sorted(sigs):
        meta.signatures[key].CopyFrom(sigs[key])
    meta.info["producer"] = "tessera.exporter"
    return BuiltModel(g, meta)


def _warmup_file(records: Sequence[bytes | warmup_pb2.PredictionLog], meta: bundle_pb2.MetaGraph) -> bytes:
    """The warmup file's bytes; each record must parse and name a signature of this export."""
    payloads = []
    for i, record in enumerate(records):
        payload = record.SerializeToString() if isinstance(record, warmup_pb2.PredictionLog) else bytes(record)
        log = warmup_pb2.PredictionLog()
        try:
            log.ParseFromString(payload)
        except Exception as e:  # DecodeError and friends: a bad record is the caller's mistake
            raise ExportError(f"warmup record {i} is not a serialized PredictionLog ({e})") from None
        kind = log.WhichOneof("log_type")
        if kind is None:
            raise ExportError(f"warmup record {i} holds no request")
        request = getattr(log, kind).request
        if hasattr(request, "model_spec"):
            key = request.model_spec.signature_name or DEFAULT_SERVING_SIGNATURE
            if key not in meta.signatures:
                raise ExportError(f"warmup record {i} ({kind}) names signature {key!r}, not in {sorted(meta.signatures)}")
        payloads.append(payload)
    return warmup.encode_records(payloads)


def export_model(
    export_dir_base: str,
    model_fn: ModelFn,
    serving_input_receiver_fn: ReceiverFn | None,
    *,
    signatures: Mapping[str, tuple[ReceiverFn, str]] | None = None,
    default_head: str | None = None,
    assets_extra: Mapping[str, bytes] | None = None,
    warmup_requests: Sequence[bytes | warmup_pb2.PredictionLog] | None = None,
    keep: int | None = None,
    now: float | None = None,
) -> str:
    """Builds the model over its receiver(s) and publishes it as a new version; returns its path/URI.

    `warmup_requests` are serialized PredictionLogs (exporter.warmup builds them), written to
    ``assets.extra/tf_serving_warmup_requests``. `keep` removes all but the newest `keep` versions
    afterwards. `now` (Unix seconds) picks the version; default: the current time.
    Raises ExportError for a bad model, receiver, head choice or warmup record.
    """
    built = build_model(model_fn, serving_input_receiver_fn, signatures=signatures, default_head=default_head)
    extra = dict(assets_extra or {})
    if warmup_requests:
        if warmup.WARMUP_FILE in extra:
            raise ExportError(f"{warmup.WARMUP_FILE} given both in assets_extra and as warmup_requests")
        extra[warmup.WARMUP_FILE] = _warmup_file(warmup_requests, built.meta_graph)
    clock = time.time() if now is None else now
    staging_root = tempfile.mkdtemp(prefix="tessera-export-")
    try:
        staging = f"{staging_root}/bundle"
        bundle.write_bundle(
            staging, built.meta_graph, built.graph.variables, built.graph.assets, extra,
            created_unix_seconds=int(clock),
        )  # fmt: skip
        try:  # the same checks a server runs at load: refuse to publish what would not load
            Runtime.from_bundle(bundle.read_bundle(staging))
        except (BundleError, GraphError) as e:
            raise ExportError(f"the written bundle does not load: {e}") from None
        path = _publish(staging, export_dir_base, clock)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    if keep is not None:
        storage.keep(export_dir_base, keep)
    return path


def _publish(staging: str, base: str, clock: float) -> str:
    for _ in range(_PUBLISH_ATTEMPTS):
        version = storage.next_version(base, clock)
        try:
            return storage.publish(staging, base, version)
        except ExportError:
            if version not in storage.list_versions(base, missing_ok=True):
                raise
            # Another exporter published this version first: pick the next one.
    raise ExportError(f"could not publish under {base}: versions kept being taken by other exporters")
