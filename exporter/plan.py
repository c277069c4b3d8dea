"""Execution plans: a signature pruned to the nodes its outputs need and compiled, once at load,
into a flat list of steps over numbered value slots, so a run is one Python loop over precomputed
steps with no dict churn (`exporter.runtime` runs them).

`compile_plan` takes the checked graph (`Graph`: its nodes, their topological order, inferred
types and prepared states) and refuses a signature that needs a placeholder it does not feed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.errors import GraphError
from exporter.ops.registry import KernelFn, TensorType, get_op
from exporter.signature import Signature
from protos.tessera import bundle_pb2


@dataclass(frozen=True)
class Step:
    """One node's kernel call: its prepared state, the slots it reads and the first it writes."""

    kernel: KernelFn
    state: Any
    in_slots: tuple[int, ...]
    out_slot: int  # first output slot; outputs are consecutive
    node: str


@dataclass(frozen=True)
class Plan:
    """A signature's computation as steps over numbered value slots: feeds in, fetches out."""

    feeds: tuple[tuple[str, int], ...]  # (alias, slot)
    steps: tuple[Step, ...]
    fetches: tuple[tuple[str, int], ...]  # (alias, slot)
    num_slots: int


def parse_ref(ref: str) -> tuple[str, int]:
    """"node:index" (or "node", index 0) -> (node, index)."""
    node, sep, index = ref.rpartition(":")
    if not sep:
        return ref, 0
    if not index.isdigit():
        raise GraphError(f"bad tensor reference {ref!r}")
    return node, int(index)


@dataclass(frozen=True)
class Graph:
    """A graph checked at load: what plans are compiled from."""

    nodes: Mapping[str, bundle_pb2.NodeDef]
    order: list[str]  # topological
    types: Mapping[str, list[TensorType]]  # node -> its outputs' types
    states: Mapping[str, Any]  # node -> its op's prepared state


def topological_order(nodes: Mapping[str, bundle_pb2.NodeDef]) -> list[str]:
    """The nodes' names, each after every node it reads from; GraphError on a cycle or a dangling input."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for root in nodes:
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                if state.get(name) == 2:
                    continue
                state[name] = 1
            inputs = nodes[name].inputs
            if i < len(inputs):
                stack.append((name, i + 1))
                producer, _ = parse_ref(inputs[i])
                if producer not in nodes:
                    raise GraphError(f"node {name!r}: input {inputs[i]!r} names no node")
                if state.get(producer) == 1:
                    raise GraphError(f"node {name!r}: the graph has a cycle through {producer!r}")
                if state.get(producer) != 2:
                    stack.append((producer, 0))
            else:
                state[name] = 2
                order.append(name)
    return order


def compile_plan(
    graph: Graph, sig: Signature, aliases: tuple[str, ...], feed_refs: Mapping[str, str] | None = None
) -> Plan:
    """The plan that computes `sig`'s outputs `aliases` from its inputs: only the nodes they need,
    in topological order. `feed_refs` (alias -> tensor name) feeds tensors other than the
    signature's placeholders (a parsing receiver's outputs, bypassing it)."""
    slots: dict[tuple[str, int], int] = {}
    feeds = []
    fed_nodes = set()
    refs = feed_refs if feed_refs is not None else {a: info.name for a, info in sig.inputs.items()}
    for alias, name in sorted(refs.items()):
        ref = parse_ref(name)
        slots[ref] = len(slots)
        feeds.append((alias, slots[ref]))
        fed_nodes.add(ref[0])
    needed: set[str] = set()
    frontier = [parse_ref(sig.outputs[a].name)[0] for a in aliases]
    while frontier:
        name = frontier.pop()
        if name in needed or name in fed_nodes:
            continue
        needed.add(name)
        frontier.extend(parse_ref(ref)[0] for ref in graph.nodes[name].inputs)
    steps = []
    for name in graph.order:
        if name not in needed:
            continue
        node = graph.nodes[name]
        if node.op == "Placeholder":
            raise GraphError(f"signature {sig.key!r} needs placeholder {name!r}, which is not one of its inputs")
        in_slots = tuple(slots[parse_ref(ref)] for ref in node.inputs)
        first = len(slots)
        for i in range(len(graph.types[name])):
            slots[(name, i)] = first + i
        steps.append(Step(get_op(node.op).kernel, graph.states[name], in_slots, first, name))
    fetches = tuple((a, slots[parse_ref(sig.outputs[a].name)]) for a in aliases)
    return Plan(tuple(feeds), tuple(steps), fetches, len(slots))
