"""exporter.warmup: TFRecord framing with masked CRC-32C, against a warmup file made by TensorFlow."""

from __future__ import annotations

import io
import pathlib
import struct

import numpy as np
import pytest

from exporter import warmup
from exporter.errors import BundleError, ExportError
from protos.tessera import warmup_pb2


@pytest.fixture(scope="module")
def tf_file(testdata_dir: pathlib.Path) -> bytes:
    return (testdata_dir / "tf_serving_warmup_requests").read_bytes()


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),  # the standard check value of CRC-32C
        (bytes(32), 0x8A9136AA),  # RFC 3720 (iSCSI) B.4 test vectors
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
    ],
)
def test_crc32c_known_vectors(data: bytes, crc: int) -> None:
    assert warmup.crc32c(data) == crc


def test_reads_tf_made_file(tf_file: bytes, testdata_dir: pathlib.Path) -> None:
    logs = warmup.read_warmup(testdata_dir / "tf_serving_warmup_requests")
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 3 + ["classify_log"]
    for value, log in zip([0.0, 1.0, 2.0], logs[:3], strict=True):
        request = log.predict_log.request
        assert request.model_spec.name == "iris"
        assert request.model_spec.signature_name == "predict"
        tensor = request.inputs["x"]
        assert tensor.dtype == 1  # DT_FLOAT
        assert [d.size for d in tensor.tensor_shape.dim] == [1, 4]
        np.testing.assert_array_equal(np.frombuffer(tensor.tensor_content, "<f4"), np.full(4, value))
    classify = logs[3].classify_log.request
    assert classify.model_spec.name == "iris"
    assert list(classify.input.example_list.examples) == [b""]
    assert warmup.read_records(tf_file) == warmup.read_records(io.BytesIO(tf_file).getvalue())


def test_our_framing_equals_tf_byte_for_byte(tf_file: bytes, tmp_path: pathlib.Path) -> None:
    payloads = warmup.read_records(tf_file)
    assert warmup.encode_records(payloads) == tf_file
    warmup.write_records(tmp_path / "w", payloads)
    assert (tmp_path / "w").read_bytes() == tf_file
    buffer = io.BytesIO()
    warmup.write_records(buffer, payloads)
    assert buffer.getvalue() == tf_file


def test_builders_reproduce_tf_payloads(tf_file: bytes) -> None:
    payloads = warmup.read_records(tf_file)
    assert warmup.classify_log("", [b""], model_name="iris").SerializeToString() == payloads[3]
    regress = warmup.regress_log("serving_default", [b"ex1", b"ex2"], model_name="m")
    assert regress.regress_log.request.model_spec.signature_name == "serving_default"
    assert list(regress.regress_log.request.input.example_list.examples) == [b"ex1", b"ex2"]


def test_predict_log_reproduces_tf_payloads(tf_file: bytes) -> None:
    payloads = warmup.read_records(tf_file)
    ours = [
        warmup.predict_log("predict", {"x": np.full((1, 4), v, np.float32)}, model_name="iris")
        for v in (0.0, 1.0, 2.0)
    ]
    assert [log.SerializeToString() for log in ours] == payloads[:3]
    logs = [*ours, warmup.classify_log("", [b""], model_name="iris")]
    assert warmup.encode_warmup(logs) == tf_file


def test_round_trip_many_and_empty() -> None:
    payloads = [bytes([i % 256]) * i for i in range(0, 300, 7)]
    assert warmup.read_records(warmup.encode_records(payloads)) == payloads
    assert warmup.read_records(b"") == []


def test_corruption_is_refused(tf_file: bytes) -> None:
    damaged = bytearray(tf_file)
    damaged[30] ^= 0x01  # inside the first payload
    with pytest.raises(BundleError, match="record 0: corrupt payload"):
        warmup.read_records(bytes(damaged))
    damaged = bytearray(tf_file)
    damaged[0x4E] ^= 0x01  # the second record's length
    with pytest.raises(BundleError, match="record 1: corrupt length"):
        warmup.read_records(bytes(damaged))
    with pytest.raises(BundleError, match="truncated payload"):
        warmup.read_records(tf_file[:-1])
    with pytest.raises(BundleError, match="truncated header"):
        warmup.read_records(tf_file + b"\x00\x00")
    not_a_log = warmup.encode_records([b"\xff\xff\xff"])
    with pytest.raises(BundleError, match="record 0 is not a PredictionLog"):
        warmup.read_warmup(not_a_log)


def test_more_than_1000_records_is_an_error() -> None:
    assert len(warmup.read_records(warmup.encode_records([b"x"] * 1000))) == 1000
    with pytest.raises(ExportError, match="1000"):
        warmup.encode_records([b"x"] * 1001)
    # A file someone else made with 1001 records: framed by hand, refused on read.
    one = warmup.encode_records([b"x"])
    with pytest.raises(BundleError, match="more than 1000"):
        warmup.read_records(one * 1001)
    assert struct.unpack_from("<Q", one)[0] == 1


def test_round_trip_through_the_warmup_proto() -> None:
    log = warmup.classify_log("sig", [b"a", b"b"], model_name="m")
    parsed = warmup.read_warmup(warmup.encode_warmup([log]))
    assert parsed == [log]
    assert isinstance(parsed[0], warmup_pb2.PredictionLog)
