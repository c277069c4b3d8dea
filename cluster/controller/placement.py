"""Where a new replica goes: spread each model's replicas over the nodes (pure, no Ray).

Losing one node should lose at most its share of each model. Ray's own strategies do not see
models: its default packs the first node until half full, and "SPREAD" round-robins every actor
of the cluster, so two replicas of one model can still share a node when other models' replicas
are created in between. This policy counts, per node, the replicas of the one model being placed
and picks the node with room that holds the fewest of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Placed:
    """One existing replica of the model: the node it runs on, or the node it was aimed at while
    Ray has not started it yet (`None`: unknown, e.g. aimed nowhere because no node had room)."""

    name: str
    node: str | None
    started: bool


def model_holdings(replicas: Iterable[Placed], nodes: Iterable[str]) -> dict[str, int]:
    """Replicas of the model per live node (nodes holding none count 0; unknown nodes are ignored)."""
    counts = dict.fromkeys(nodes, 0)
    for replica in replicas:
        if replica.node in counts:
            counts[replica.node] += 1
    return counts


def free_after_pending(free_cpus: Mapping[str, float], pending: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Each node's free CPUs less what replicas aimed there but not started yet will take
    (Ray's free counts drop only once an actor is placed; a burst of new replicas must not all
    see the same free CPU)."""
    free = dict(free_cpus)
    for node, cpus in pending:
        if node in free:
            free[node] = max(0.0, free[node] - cpus)
    return free


def choose_node(free_cpus: Mapping[str, float], holdings: Mapping[str, int], need_cpus: float) -> str | None:
    """The node for one new replica of a model, or None when no node has room.

    `free_cpus`: live nodes -> CPUs free (less what is pending there); `holdings`: node -> replicas
    of this model there; `need_cpus`: the replica's CPU reservation. Among nodes with room
    (free >= need), the one holding the fewest of this model's replicas; ties go to the node with
    the fewest free CPUs, then to the node id (deterministic). Packing on ties is for the cluster
    autoscaler: it removes only nodes left wholly idle, and spreading every model over every node
    would leave none so; each model's own spread is untouched by it. None lets Ray queue the
    replica until room appears (a node joins; on KubeRay its autoscaler adds one for it).
    """
    room = [node for node, free in free_cpus.items() if free >= need_cpus]
    if not room:
        return None
    return min(room, key=lambda node: (holdings.get(node, 0), free_cpus[node], node))
