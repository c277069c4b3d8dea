from __future__ import annotations

import numpy as np
import pytest

from cluster import errors
from cluster.batching import merge


def req(rows: int, width: int = 2, start: float = 0.0, dtype=np.float32) -> dict[str, np.ndarray]:
    x = (np.arange(rows * width, dtype=np.float64) + start).reshape(rows, width).astype(dtype)
    return {"x": x, "id": np.arange(rows, dtype=np.int64) + int(start)}


def test_row_count_checks_dim0():
    assert merge.row_count(req(3)) == 3
    with pytest.raises(errors.InvalidArgument, match="equal 0th-dimension"):
        merge.row_count({"a": np.zeros((2, 1)), "b": np.zeros((3,))})
    with pytest.raises(errors.InvalidArgument, match="at least one dimension"):
        merge.row_count({"a": np.float32(1.0)})
    with pytest.raises(errors.InvalidArgument):
        merge.row_count({})


def test_merge_then_split_round_trips_in_order():
    requests = [req(1, start=0), req(3, start=100), req(2, start=200)]
    batch = merge.merge_inputs(requests)
    assert batch.row_counts == (1, 3, 2) and batch.padding_rows == 0
    assert batch.inputs["x"].shape == (6, 2)
    # The "model" doubles x; each request must get back exactly its own rows.
    outputs = {"y": batch.inputs["x"] * 2, "id": batch.inputs["id"]}
    parts = merge.split_outputs(outputs, batch.row_counts)
    for request, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], request["x"] * 2)
        np.testing.assert_array_equal(part["id"], request["id"])


def test_single_request_is_not_copied():
    request = req(4)
    batch = merge.merge_inputs([request])
    assert batch.inputs["x"] is request["x"]


def test_padding_to_allowed_size_repeats_row_zero_and_never_leaks():
    requests = [req(2, start=10), req(1, start=50)]
    target = merge.next_allowed_batch_size(3, (2, 4, 8))
    assert target == 4
    batch = merge.merge_inputs(requests, target_rows=target)
    assert batch.padding_rows == 1 and batch.inputs["x"].shape == (4, 2)
    np.testing.assert_array_equal(batch.inputs["x"][3], requests[0]["x"][0])
    parts = merge.split_outputs({"y": batch.inputs["x"] + 1}, batch.row_counts, padding_rows=batch.padding_rows)
    assert [p["y"].shape[0] for p in parts] == [2, 1]
    np.testing.assert_array_equal(parts[1]["y"], requests[1]["x"] + 1)


def test_padding_works_for_string_tensors():
    requests = [{"s": np.array([b"a", b"bb"], dtype=object)}, {"s": np.array([b"c"], dtype=object)}]
    batch = merge.merge_inputs(requests, target_rows=5)
    assert batch.inputs["s"].tolist() == [b"a", b"bb", b"c", b"a", b"a"]


def test_next_allowed_batch_size():
    assert merge.next_allowed_batch_size(5, ()) == 5
    assert merge.next_allowed_batch_size(1, (2, 4)) == 2
    assert merge.next_allowed_batch_size(4, (2, 4)) == 4
    with pytest.raises(ValueError):
        merge.next_allowed_batch_size(5, (2, 4))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [((4, 2, 8), "monotonically increasing"), ((2, 2, 8), "monotonically increasing"), ((2, 4), "must equal max_batch_size")],
)
def test_check_allowed_batch_sizes(sizes, message):
    merge.check_allowed_batch_sizes((2, 4, 8), 8)
    merge.check_allowed_batch_sizes((), 8)
    with pytest.raises(errors.InvalidArgument, match=message):
        merge.check_allowed_batch_sizes(sizes, 8)


def test_shape_keys_separate_incompatible_requests():
    key = lambda r, pad=False: merge.shape_key(r, pad_variable_length=pad)  # noqa: E731
    assert key(req(1, width=3)) == key(req(5, width=3))  # dim 0 does not matter
    assert key(req(1, width=3)) != key(req(1, width=4))
    assert key(req(1, width=3), True) == key(req(1, width=4), True)  # only ranks, when padding
    assert key(req(1, dtype=np.float32)) != key(req(1, dtype=np.float64))
    assert key({"a": np.zeros(1)}) != key({"b": np.zeros(1)})
    # dict order of the request does not matter
    assert key({"a": np.zeros(1), "b": np.ones(1)}) == key({"b": np.ones(1), "a": np.zeros(1)})


def test_group_compatible_keeps_first_appearance_order():
    requests = [req(1, width=2), req(1, width=3), req(2, width=2), req(1, width=3, dtype=np.float64)]
    assert merge.group_compatible(requests, pad_variable_length=False) == [[0, 2], [1], [3]]


def test_merge_refuses_mixed_dtypes_and_mismatched_shapes():
    with pytest.raises(ValueError):
        merge.merge_inputs([req(1, dtype=np.float32), req(1, dtype=np.float64)])
    with pytest.raises(ValueError):
        merge.merge_inputs([req(1, width=2), req(1, width=3)])


def test_variable_length_padding_pads_each_request_with_its_first_element():
    a = {"t": np.array([[7, 8]], dtype=np.int32)}
    b = {"t": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)}
    batch = merge.merge_inputs([a, b], target_rows=4, pad_variable_length=True)
    np.testing.assert_array_equal(
        batch.inputs["t"],
        [[7, 8, 7, 7], [1, 2, 3, 4], [5, 6, 7, 8], [7, 8, 7, 7]],  # last row: padding repeats row 0
    )


def test_variable_length_padding_of_higher_rank_strings():
    a = {"s": np.array([[[b"x"]]], dtype=object)}  # (1, 1, 1)
    b = {"s": np.array([[[b"p", b"q"], [b"r", b"s"]]], dtype=object)}  # (1, 2, 2)
    batch = merge.merge_inputs([a, b], pad_variable_length=True)
    assert batch.inputs["s"].tolist() == [[[b"x", b"x"], [b"x", b"x"]], [[b"p", b"q"], [b"r", b"s"]]]


def test_split_outputs_checks_batch_dimension():
    with pytest.raises(errors.FailedPrecondition, match="0 dimensions"):
        merge.split_outputs({"y": np.float32(1)}, [1])
    with pytest.raises(errors.FailedPrecondition, match="0th dimension"):
        merge.split_outputs({"y": np.zeros(3)}, [1, 1], padding_rows=0)


def test_sliced_rows_are_views_and_their_outputs_reassemble():
    request = req(7)
    chunks = [merge.slice_rows(request, start, min(start + 3, 7)) for start in range(0, 7, 3)]
    assert [merge.row_count(c) for c in chunks] == [3, 3, 1]
    assert np.shares_memory(chunks[1]["x"], request["x"])  # views, not copies
    outputs = [{"y": c["x"] * 3} for c in chunks]
    np.testing.assert_array_equal(merge.concat_outputs(outputs)["y"], request["x"] * 3)


def test_zero_row_requests_merge_and_split():
    batch = merge.merge_inputs([req(0), req(2)], target_rows=4)
    assert batch.inputs["x"].shape == (4, 2)
    parts = merge.split_outputs({"y": batch.inputs["x"]}, batch.row_counts, padding_rows=batch.padding_rows)
    assert parts[0]["y"].shape == (0, 2) and parts[1]["y"].shape == (2, 2)
    empty = merge.merge_inputs([req(0)], target_rows=2)
    assert empty.padding_rows == 0 and empty.inputs["x"].shape == (0, 2)
