"""The numpy graph runtime: validates a bundle's graph once, plans each signature once, runs it.

At load: every node's op must be registered, every input must name an existing output, the graph
must be acyclic, and types are re-inferred (a mismatch is a GraphError naming the node). Each
signature is then compiled into a plan (`exporter.plan`): the nodes its outputs need, as a flat
list of steps over numbered value slots, so a run is one Python loop with no dict churn.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter import attrs as attr_codec
from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.features import FeatureSpec, SparseTensorValue, output_layout
from exporter.ops.registry import LoadContext, Resource, TensorType, get_op
from exporter.plan import Graph, Plan, compile_plan, parse_ref, topological_order
from exporter.signature import Shape, Signature, TensorInfo, Tensors
from protos.tessera import bundle_pb2

if TYPE_CHECKING:
    from exporter.bundle import Bundle
    from exporter.servable import LoadOptions


def _shape_of(proto: bundle_pb2.Shape) -> Shape:
    if proto.unknown_rank:
        return None
    return tuple(None if d < 0 else int(d) for d in proto.dim)


class Runtime:
    """A loaded, validated graph with one execution plan per signature."""

    def __init__(
        self,
        meta_graph: bundle_pb2.MetaGraph,
        variables: Mapping[str, np.ndarray] | None = None,
        assets_dir: pathlib.Path | None = None,
        assets_extra_dir: pathlib.Path | None = None,
        options: LoadOptions | None = None,
    ) -> None:
        ctx = LoadContext(variables=dict(variables or {}), assets_dir=assets_dir, options=options)
        self.variables: Mapping[str, np.ndarray] = ctx.variables
        self.assets_extra_dir = assets_extra_dir
        self._resources: list[Resource] = []
        self._nodes: dict[str, bundle_pb2.NodeDef] = {}
        self._types: dict[str, list[TensorType]] = {}
        self._states: dict[str, Any] = {}
        try:
            self._load(meta_graph, ctx)
        except BaseException:
            self._collect_resources(ctx)
            self.close()  # a half-loaded graph releases the sessions it opened
            raise
        self._collect_resources(ctx)

    def _collect_resources(self, ctx: LoadContext) -> None:
        found = [*ctx.shared.values(), *self._states.values()]
        unique = {id(r): r for r in found if isinstance(r, Resource)}
        self._resources = list(unique.values())

    def _load(self, meta_graph: bundle_pb2.MetaGraph, ctx: LoadContext) -> None:
        for node in meta_graph.graph.nodes:
            if node.name in self._nodes:
                raise GraphError(f"node {node.name!r} defined twice")
            self._nodes[node.name] = node
        self._order = topological_order(self._nodes)
        for name in self._order:
            self._check_node(self._nodes[name], ctx)
        self._graph = Graph(self._nodes, self._order, self._types, self._states)
        self.signatures: dict[str, Signature] = {
            key: self._check_signature(key, sig) for key, sig in meta_graph.signatures.items()
        }
        self._plans: dict[tuple[str, tuple[str, ...]], Plan] = {}
        for key, sig in self.signatures.items():
            self._plans[(key, ())] = self._compile_plan(sig, tuple(sorted(sig.outputs)))
        self._feature_plans: dict[tuple[str, tuple[str, ...]], Plan] = {}
        self._parse_nodes: dict[str, bundle_pb2.NodeDef | None] = {}

    # -- load-time checks ----------------------------------------------------------------------
    def _check_node(self, node: bundle_pb2.NodeDef, ctx: LoadContext) -> None:
        try:
            opdef = get_op(node.op)
            opdef.check_arity(len(node.inputs))
            in_types = []
            for ref in node.inputs:
                producer, index = parse_ref(ref)
                outs = self._types[producer]
                if index >= len(outs):
                    raise GraphError(f"input {ref!r}: {producer!r} has only {len(outs)} outputs")
                in_types.append(outs[index])
            node_attrs = attr_codec.decode_map(node.attrs)
            self._types[node.name] = list(opdef.infer(in_types, node_attrs))
            self._states[node.name] = opdef.prepare(node_attrs, ctx)
        except GraphError as e:
            raise GraphError(f"node {node.name!r} ({node.op}): {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise GraphError(f"node {node.name!r} ({node.op}): invalid attributes: {e!r}") from None

    def _tensor_type(self, ref: str) -> TensorType:
        producer, index = parse_ref(ref)
        outs = self._types.get(producer)
        if outs is None or index >= len(outs):
            raise GraphError(f"tensor {ref!r} is not in the graph")
        return outs[index]

    def _check_signature(self, key: str, sig: bundle_pb2.SignatureDef) -> Signature:
        def infos(specs: Mapping[str, bundle_pb2.TensorSpec], kind: str) -> dict[str, TensorInfo]:
            out = {}
            for alias, spec in specs.items():
                actual = self._tensor_type(spec.name)
                if actual.dtype != spec.dtype:
                    raise GraphError(
                        f"signature {key!r} {kind} {alias!r}: declared {dtypes.name(spec.dtype)}, "
                        f"graph has {dtypes.name(actual.dtype)}"
                    )
                out[alias] = TensorInfo(spec.name, spec.dtype, _shape_of(spec.shape))
            return out

        inputs = infos(sig.inputs, "input")
        for alias, info in inputs.items():
            if self._nodes[parse_ref(info.name)[0]].op != "Placeholder":
                raise GraphError(f"signature {key!r} input {alias!r} is not a Placeholder")
        return Signature(key, sig.method_name, inputs, infos(sig.outputs, "output"))

    def _compile_plan(
        self, sig: Signature, aliases: tuple[str, ...], feed_refs: Mapping[str, str] | None = None
    ) -> Plan:
        return compile_plan(self._graph, sig, aliases, feed_refs)

    # -- the parsing receiver, bypassed ----------------------------------------------------------
    def _parse_node(self, key: str) -> bundle_pb2.NodeDef | None:
        """The ParseExample node that is the one consumer of signature `key`'s one input, if any
        (found once per signature: a call must not walk the graph)."""
        if key not in self._parse_nodes:
            self._parse_nodes[key] = self._find_parse_node(key)
        return self._parse_nodes[key]

    def _find_parse_node(self, key: str) -> bundle_pb2.NodeDef | None:
        sig = self.signatures.get(key)
        if sig is None or len(sig.inputs) != 1:
            return None
        (info,) = sig.inputs.values()
        placeholder = parse_ref(info.name)[0]
        consumers = [n for n in self._nodes.values() if any(parse_ref(r)[0] == placeholder for r in n.inputs)]
        if len(consumers) != 1 or consumers[0].op != "ParseExample":
            return None
        return consumers[0]

    def example_features(self, key: str) -> dict[str, FeatureSpec] | None:
        """The feature spec of signature `key`'s parsing receiver, if its one input is parsed by one.

        With it a caller that already holds the features (batch prediction over columns) can skip
        serializing tf.Examples only for the graph to parse them again: see `run_features`.
        """
        node = self._parse_node(key)
        return None if node is None else dict(self._states[node.name].spec)  # the node's ExampleParser

    def run_features(
        self,
        signature_key: str,
        features: Mapping[str, np.ndarray | SparseTensorValue],
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        """Runs signature `signature_key` from its receiver's parsed features, as ParseExample
        would have produced them (`exporter.example_parser.parse_example`: dense [batch, *shape], or a
        SparseTensorValue); the same outputs as `run` on the serialized Examples."""
        node = self._parse_node(signature_key)
        if node is None:
            raise InvalidInputError(f"signature {signature_key!r} has no parsing receiver to bypass")
        spec = self._states[node.name].spec
        if features.keys() != spec.keys():
            raise InvalidInputError(f"features {sorted(features)} do not match the receiver's {sorted(spec)}")
        sig = self.signatures[signature_key]
        aliases = tuple(sorted(output_filter or sig.outputs))
        plan = self._feature_plans.get((signature_key, aliases))
        if plan is None:
            for alias in aliases:
                if alias not in sig.outputs:
                    raise InvalidInputError(f"output tensor alias not found in signature: {alias}")
            refs = {f"{k}/{part}": f"{node.name}:{i}" for i, (k, part) in enumerate(output_layout(spec))}
            plan = self._feature_plans[(signature_key, aliases)] = self._compile_plan(sig, aliases, refs)
        feeds: dict[str, Any] = {}
        for key, value in features.items():
            if isinstance(value, SparseTensorValue):
                feeds.update({f"{key}/{part}": getattr(value, part) for part in ("indices", "values", "dense_shape")})
            else:
                feeds[f"{key}/dense"] = value
        return self._execute(plan, feeds)

    # -- running -------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, bundle: Bundle, options: LoadOptions | None = None) -> Runtime:
        return cls(bundle.meta_graph, bundle.variables, bundle.assets_dir, bundle.assets_extra_dir, options)

    @property
    def resident_bytes(self) -> int:
        """The variables' bytes (memory-mapped: shared by every process that maps the same files),
        plus what the ops' sessions hold (an ONNX model's weights and arena)."""
        return sum(int(a.nbytes) for a in self.variables.values()) + sum(r.resident_bytes for r in self._resources)

    def close(self) -> None:
        """Closes the ops' sessions; the variables' maps close when the arrays are collected."""
        resources, self._resources = self._resources, []
        for resource in resources:
            resource.close()

    def _plan(self, key: str, output_filter: Sequence[str] | None) -> Plan:
        sig = self.signatures.get(key)
        if sig is None:
            raise InvalidInputError(f'Serving signature key "{key}" not found.')
        if not output_filter:
            return self._plans[(key, ())]
        aliases = tuple(sorted(output_filter))
        plan = self._plans.get((key, aliases))
        if plan is None:
            for alias in aliases:
                if alias not in sig.outputs:
                    raise InvalidInputError(f"output tensor alias not found in signature: {alias}")
            # Bounded by the number of distinct filters a client uses (subsets of the outputs).
            plan = self._plans[(key, aliases)] = self._compile_plan(sig, aliases)
        return plan

    def run(
        self,
        signature_key: str,
        feeds: Mapping[str, np.ndarray],
        output_filter: Sequence[str] | None = None,
    ) -> Tensors:
        """Runs a signature on `feeds` (alias -> array); returns its outputs (alias -> array).

        `feeds` have passed `check_feeds` where the request entered (the servable contract): the
        replica checks each request before it is merged into a batch, so checking the merged batch
        again here would only repeat that check on more rows.
        """
        return self._execute(self._plan(signature_key, output_filter), feeds)

    def _execute(self, plan: Plan, feeds: Mapping[str, Any]) -> Tensors:
        values: list[Any] = [None] * plan.num_slots
        for alias, slot in plan.feeds:
            values[slot] = feeds[alias]
        for step in plan.steps:
            try:
                outs = step.kernel([values[i] for i in step.in_slots], step.state)
            except InvalidInputError:
                raise
            except (ValueError, IndexError, TypeError, FloatingPointError) as e:
                raise InvalidInputError(f"node {step.node!r}: {e}") from None
            values[step.out_slot : step.out_slot + len(outs)] = outs
        return {alias: values[slot] for alias, slot in plan.fetches}
