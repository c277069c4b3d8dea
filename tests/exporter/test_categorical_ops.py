"""Categorical ops through the registry (prepare + kernel + infer), and one graph run end to end."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.features import FixedLenFeature, VarLenFeature
from exporter.ops.categorical import fingerprint64, vocabulary_file
from exporter.ops.registry import LoadContext, TensorType, get_op
from protos.tessera import example_pb2


def _run(
    op: str, inputs: list[np.ndarray], attrs: Mapping[str, Any], assets: pathlib.Path | None = None
) -> Any:
    opdef = get_op(op)
    state = opdef.prepare(attrs, LoadContext(assets_dir=assets))
    return opdef.kernel(inputs, state)


def _strings(*values: bytes) -> np.ndarray:
    return dtypes.as_array(list(values), dtypes.STRING)


def _blake(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def test_fingerprint_is_the_documented_blake2b() -> None:
    keys = _strings(b"", b"tessera", b"\xff\x00")
    np.testing.assert_array_equal(fingerprint64(keys), np.array([_blake(k) for k in keys], np.uint64))
    ints = np.array([[-12, 0], [7, 2**62]], dtype=np.int64)
    expected = [[_blake(b"-12"), _blake(b"0")], [_blake(b"7"), _blake(str(2**62).encode())]]
    np.testing.assert_array_equal(fingerprint64(ints), np.array(expected, np.uint64))


def test_hash_bucket() -> None:
    keys = _strings(b"a", b"b", b"a", b"zz").reshape(2, 2)
    (out,) = _run("HashBucket", [keys], {"num_buckets": 5})
    assert out.dtype == np.int64 and out.shape == (2, 2)
    np.testing.assert_array_equal(out.reshape(-1), [_blake(k) % 5 for k in keys.reshape(-1)])
    (ints,) = _run("HashBucket", [np.array([3, 3, -1], np.int64)], {"num_buckets": 1000})
    assert ints[0] == ints[1] == _blake(b"3") % 1000 and ints[2] == _blake(b"-1") % 1000
    op = get_op("HashBucket")
    assert op.infer([TensorType(dtypes.INT32, (None,))], {"num_buckets": 3}) == [
        TensorType(dtypes.INT64, (None,))
    ]
    with pytest.raises(GraphError, match="strings or integers"):
        op.infer([TensorType(dtypes.FLOAT, (None,))], {"num_buckets": 3})
    with pytest.raises(GraphError, match="num_buckets"):
        op.infer([TensorType(dtypes.STRING, (None,))], {"num_buckets": 0})


def _vocab(tmp_path: pathlib.Path, keys: list[Any], name: str = "vocab.txt") -> str:
    (tmp_path / name).write_bytes(vocabulary_file(keys))
    return name


def test_vocabulary_lookup_strings(tmp_path: pathlib.Path) -> None:
    asset = _vocab(tmp_path, ["us", "fr", "de"])
    keys = _strings(b"fr", b"xx", b"us", b"de", b"yy", b"").reshape(3, 2)
    attrs = {"asset": asset.encode(), "key_dtype": dtypes.STRING}
    (ids,) = _run("VocabularyLookup", [keys], attrs, tmp_path)
    np.testing.assert_array_equal(ids, [[1, -1], [0, 2], [-1, -1]])
    (ids,) = _run("VocabularyLookup", [keys], {**attrs, "default_value": 9}, tmp_path)
    np.testing.assert_array_equal(ids, [[1, 9], [0, 2], [9, 9]])
    (ids,) = _run("VocabularyLookup", [keys], {**attrs, "num_oov_buckets": 4}, tmp_path)
    np.testing.assert_array_equal(ids[0], [1, 3 + _blake(b"xx") % 4])
    np.testing.assert_array_equal(ids[2], [3 + _blake(b"yy") % 4, 3 + _blake(b"") % 4])


def test_vocabulary_lookup_int64_and_refusals(tmp_path: pathlib.Path) -> None:
    asset = _vocab(tmp_path, [40, -3, 7, 100])
    attrs = {"asset": asset, "key_dtype": dtypes.INT64, "num_oov_buckets": 2}
    (ids,) = _run("VocabularyLookup", [np.array([7, 8, -3, 100, 1000, 40], np.int64)], attrs, tmp_path)
    np.testing.assert_array_equal(ids, [2, 4 + _blake(b"8") % 2, 1, 3, 4 + _blake(b"1000") % 2, 0])
    empty = _vocab(tmp_path, [], "empty.txt")
    (ids,) = _run(
        "VocabularyLookup",
        [np.array([1, 2], np.int64)],
        {"asset": empty, "key_dtype": dtypes.INT64},
        tmp_path,
    )
    np.testing.assert_array_equal(ids, [-1, -1])
    dup = _vocab(tmp_path, ["a", "b", "a"], "dup.txt")
    with pytest.raises(GraphError, match="duplicate"):
        _run("VocabularyLookup", [], {"asset": dup, "key_dtype": dtypes.STRING}, tmp_path)
    with pytest.raises(GraphError, match="int64 per line"):
        _run("VocabularyLookup", [], {"asset": dup, "key_dtype": dtypes.INT64}, tmp_path)
    with pytest.raises(GraphError, match="escapes"):
        _run("VocabularyLookup", [], {"asset": "../x", "key_dtype": dtypes.STRING}, tmp_path)
    op = get_op("VocabularyLookup")
    with pytest.raises(GraphError, match="string keys, got int64 input"):
        op.infer([TensorType(dtypes.INT64, (None,))], {"asset": asset, "key_dtype": dtypes.STRING})
    with pytest.raises(ValueError, match="newline"):
        vocabulary_file(["a\nb"])


def test_bucketize_boundary_goes_up() -> None:
    attrs = {"boundaries": (0.0, 1.5, 10.0)}
    x = np.array([[-1.0, 0.0, 0.1], [1.5, 9.99, 10.0]], np.float32)
    (out,) = _run("Bucketize", [x], attrs)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 1, 1], [2, 2, 3]])
    (ints,) = _run("Bucketize", [np.array([0, 1, 2, 10, 11], np.int64)], attrs)
    np.testing.assert_array_equal(ints, [1, 1, 2, 3, 3])
    # TF keeps float32 boundaries: 0.1 as a float32 value equals the float32 boundary 0.1.
    (tie,) = _run("Bucketize", [np.array([0.1], np.float32)], {"boundaries": (0.1,)})
    np.testing.assert_array_equal(tie, [1])
    op = get_op("Bucketize")
    with pytest.raises(GraphError, match="sorted"):
        op.infer([TensorType(dtypes.FLOAT, (None,))], {"boundaries": (2.0, 1.0)})
    with pytest.raises(GraphError, match="numbers"):
        op.infer([TensorType(dtypes.STRING, (None,))], attrs)


def test_gather() -> None:
    params = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids = np.array([[3, 0], [1, 1]], np.int64)
    (out,) = _run("Gather", [params, ids], {})
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], params[3])
    for bad in (4, -1):
        with pytest.raises(InvalidInputError, match=rf"Gather: id {bad} is out of range \[0, 4\)"):
            _run("Gather", [params, np.array([0, bad], np.int64)], {})
    op = get_op("Gather")
    assert op.infer([TensorType(dtypes.FLOAT, (4, 3)), TensorType(dtypes.INT64, (None, 2))], {}) == [
        TensorType(dtypes.FLOAT, (None, 2, 3))
    ]
    with pytest.raises(GraphError, match="integers"):
        op.infer([TensorType(dtypes.FLOAT, (4, 3)), TensorType(dtypes.FLOAT, (None,))], {})


def _reference_combine(params, rows, ids, weights, batch, combiner):  # type: ignore[no-untyped-def]
    out = np.zeros((batch, params.shape[1]), np.float64)
    for b in range(batch):
        pairs = [(i, w) for r, i, w in zip(rows, ids, weights, strict=True) if r == b and i >= 0 and w > 0]
        if not pairs:
            continue
        total = sum(w * params[i].astype(np.float64) for i, w in pairs)
        scale = {"sum": 1.0, "mean": sum(w for _, w in pairs), "sqrtn": np.sqrt(sum(w * w for _, w in pairs))}
        out[b] = total / scale[combiner]
    return out


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True])
def test_sparse_segment_combine(combiner: str, weighted: bool) -> None:
    rng = np.random.default_rng(1)
    params = rng.normal(size=(6, 3)).astype(np.float32)
    indices = np.array([[0, 0], [0, 1], [0, 2], [2, 0], [3, 0], [3, 1]], np.int64)
    ids = np.array([1, 5, 1, 0, -1, 4], np.int64)  # row 1 empty; the -1 (an OOV default) is dropped
    weights = np.array([0.5, 2.0, 1.0, 3.0, 1.0, 0.0], np.float32) if weighted else np.ones(6, np.float32)
    inputs = [params, indices, ids, np.array([5, 3], np.int64)] + ([weights] if weighted else [])
    (out,) = _run("SparseSegmentCombine", inputs, {"combiner": combiner})
    assert out.dtype == np.float32 and out.shape == (5, 3)
    expected = _reference_combine(params, indices[:, 0], ids, weights, 5, combiner)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert not out[1].any() and not out[4].any()


def test_sparse_segment_combine_refusals() -> None:
    params = np.ones((3, 2), np.float32)
    with pytest.raises(InvalidInputError, match=r"SparseSegmentCombine: id 3 is out of range \[0, 3\)"):
        _run(
            "SparseSegmentCombine",
            [params, np.array([[0, 0]]), np.array([3]), np.array([1, 1])],
            {"combiner": "sum"},
        )
    with pytest.raises(InvalidInputError, match="row index"):
        _run(
            "SparseSegmentCombine",
            [params, np.array([[2, 0]]), np.array([1]), np.array([1, 1])],
            {"combiner": "sum"},
        )
    op = get_op("SparseSegmentCombine")
    types = [
        TensorType(dtypes.FLOAT, (3, 2)),
        TensorType(dtypes.INT64, (None, 2)),
        TensorType(dtypes.INT64, (None,)),
        TensorType(dtypes.INT64, (2,)),
    ]
    assert op.infer(types, {"combiner": b"mean"}) == [TensorType(dtypes.FLOAT, (None, 2))]
    with pytest.raises(GraphError, match="combiner"):
        op.infer(types, {"combiner": "max"})
    with pytest.raises(GraphError, match="ids must be integers"):
        op.infer([*types[:2], TensorType(dtypes.STRING, (None,)), types[3]], {"combiner": "sum"})
    with pytest.raises(GraphError, match="weights must be floats"):
        op.infer([*types, TensorType(dtypes.INT64, (None,))], {"combiner": "sum"})


def test_sparse_to_indicator_counts_duplicates() -> None:
    indices = np.array([[0, 0], [0, 1], [0, 2], [2, 0], [2, 1]], np.int64)
    ids = np.array([1, 1, 3, 0, 7], np.int64)  # 7 >= depth adds nothing, as TF's one_hot
    (out,) = _run("SparseToIndicator", [indices, ids, np.array([3, 3], np.int64)], {"depth": 4})
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 2, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    weights = np.array([0.5, 0.25, 2.0, 1.0, 9.0], np.float32)
    (wout,) = _run("SparseToIndicator", [indices, ids, np.array([3, 3], np.int64), weights], {"depth": 4})
    np.testing.assert_array_equal(wout, [[0, 0.75, 0, 2], [0, 0, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(GraphError, match="depth"):
        get_op("SparseToIndicator").infer(
            [
                TensorType(dtypes.INT64, (None, 2)),
                TensorType(dtypes.INT64, (None,)),
                TensorType(dtypes.INT64, (2,)),
            ],
            {"depth": 0},
        )


def _serialize(country: bytes, age: float, tags: list[bytes]) -> bytes:
    ex = example_pb2.Example()
    ex.features.feature["country"].bytes_list.value.append(country)
    ex.features.feature["age"].float_list.value.append(age)
    ex.features.feature["tags"].bytes_list.value.extend(tags)
    return ex.SerializeToString()


def test_graph_placeholder_parse_example_and_feature_columns_through_runtime(tmp_path: pathlib.Path) -> None:
    from exporter.graph import GraphBuilder
    from exporter.ops import categorical as cat
    from exporter.ops import embedding as emb
    from exporter.ops.parsing import parse_example
    from exporter.outputs import PredictOutput
    from exporter.runtime import Runtime
    from protos.tessera import bundle_pb2

    g = GraphBuilder()
    serialized = g.placeholder(dtypes.STRING, (None,), name="examples")
    spec = {
        "country": FixedLenFeature([], "string", default_value=b""),
        "age": FixedLenFeature([1], "float32"),
        "tags": VarLenFeature("string"),
    }
    f = parse_example(serialized, spec)
    asset = g.add_asset("tags.txt", cat.vocabulary_file([b"t0", b"t1", b"t2"]))
    tag_ids = cat.vocabulary_lookup(f["tags"], asset, num_oov_buckets=1)
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    outputs = {
        "tags_mean": emb.embedding_combine(g.variable(table, "tag_table"), tag_ids, combiner="mean"),
        "tags_hot": emb.sparse_to_indicator(tag_ids, 4),
        "age_bucket": cat.bucketize(f["age"], [18.0, 65.0]),
        "country_emb": emb.gather(
            g.variable(np.eye(3, dtype=np.float32), "c"), cat.hash_bucket(f["country"], 3)
        ),
    }
    meta = bundle_pb2.MetaGraph(graph=g.to_proto())
    meta.signatures["serving_default"].CopyFrom(
        PredictOutput(outputs).as_signature_def({"examples": serialized})
    )
    for name, content in g.assets.items():
        (tmp_path / name).write_bytes(content)
    rt = Runtime(meta, g.variables, tmp_path)

    batch = dtypes.as_array(
        [
            _serialize(b"us", 30.0, [b"t1", b"zz"]),
            _serialize(b"fr", 65.0, []),
            _serialize(b"us", 5.0, [b"t2"]),
        ],
        dtypes.STRING,
    )
    out = rt.run("serving_default", {"examples": batch})
    np.testing.assert_allclose(out["tags_mean"], [(table[1] + table[3]) / 2, [0, 0], table[2]])
    np.testing.assert_array_equal(out["tags_hot"], [[0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(out["age_bucket"], [[1], [2], [0]])
    buckets = [_blake(c) % 3 for c in (b"us", b"fr", b"us")]
    np.testing.assert_array_equal(out["country_emb"], np.eye(3, dtype=np.float32)[buckets])
    with pytest.raises(InvalidInputError, match=r"Key: age, Index: 1\..*required"):
        rt.run("serving_default", {"examples": dtypes.as_array([batch[0], b""], dtypes.STRING)})
