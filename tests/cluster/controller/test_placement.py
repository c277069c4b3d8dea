"""The spreading policy: each model's replicas over as many nodes as have room."""

from __future__ import annotations

from cluster.controller.placement import Placed, choose_node, free_after_pending, model_holdings


def _place(models: list[str], free: dict[str, float], need: float) -> dict[str, list[str | None]]:
    """Places replicas one after another, as the controller does, pending ones counted."""
    placed: dict[str, list[Placed]] = {}
    pending: list[tuple[str, float]] = []
    for i, model in enumerate(models):
        mine = placed.setdefault(model, [])
        node = choose_node(free_after_pending(free, pending), model_holdings(mine, free), need)
        mine.append(Placed(f"{model}:{i}", node, started=False))
        if node is not None:
            pending.append((node, need))
    return {m: [p.node for p in ps] for m, ps in placed.items()}


def test_a_model_s_replicas_go_to_different_nodes_even_when_one_node_has_room_for_all() -> None:
    assert set(_place(["m", "m"], {"a": 8.0, "b": 8.0}, 1.0)["m"]) == {"a", "b"}


def test_interleaved_models_each_spread_where_a_cluster_wide_round_robin_would_not() -> None:
    # A round-robin over all actors (Ray's SPREAD) gives a0->a, b0->b, a1->a: model a on one node.
    placed = _place(["a", "b", "a", "b"], {"n1": 4.0, "n2": 4.0}, 1.0)
    assert len(set(placed["a"])) == 2 and len(set(placed["b"])) == 2


def test_three_replicas_on_two_nodes_split_two_and_one() -> None:
    placed = _place(["m", "m", "m"], {"a": 4.0, "b": 4.0}, 1.0)["m"]
    assert sorted(placed.count(n) for n in ("a", "b")) == [1, 2]


def test_a_node_without_room_is_never_chosen_and_no_room_anywhere_is_none() -> None:
    assert choose_node({"head": 0.0, "w": 1.0}, {"w": 3}, 1.0) == "w"  # the head holds no replicas
    assert choose_node({"head": 0.0, "w": 0.5}, {}, 1.0) is None  # Ray queues it; an autoscaler adds a node
    assert choose_node({}, {}, 1.0) is None


def test_pending_replicas_use_up_room_before_ray_reports_it() -> None:
    free = free_after_pending({"a": 1.0, "b": 1.0}, [("a", 1.0), ("gone", 1.0)])
    assert free == {"a": 0.0, "b": 1.0}
    assert choose_node(free, {}, 1.0) == "b"


def test_ties_pack_the_fullest_node_with_room_then_go_by_node_id() -> None:
    # Packing leaves whole nodes idle for a cluster autoscaler to remove.
    assert choose_node({"a": 1.0, "b": 3.0, "c": 0.5}, {"a": 1, "b": 1}, 1.0) == "a"
    assert choose_node({"b": 2.0, "a": 2.0}, {}, 1.0) == "a"
    # Fewest of this model wins over packing.
    assert choose_node({"a": 1.0, "b": 3.0}, {"a": 1, "b": 0}, 1.0) == "b"


def test_one_replica_models_pack_onto_as_few_nodes_as_hold_them() -> None:
    placed = _place([f"m{i}" for i in range(4)], {"a": 2.0, "b": 2.0, "c": 2.0}, 1.0)
    assert sorted(str(n) for nodes in placed.values() for n in nodes) == ["a", "a", "b", "b"]


def test_holdings_count_live_nodes_only() -> None:
    replicas = [Placed("m:0", "a", True), Placed("m:1", "a", False), Placed("m:2", "dead", True), Placed("m:3", None, False)]
    assert model_holdings(replicas, ["a", "b"]) == {"a": 2, "b": 0}
