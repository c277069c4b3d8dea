"""Warmup requests: ``assets.extra/tf_serving_warmup_requests``, a TFRecord file of PredictionLogs.

TFRecord framing (spec §11), per record, uncompressed::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | payload | uint32 masked_crc32c(payload)

with CRC-32C (Castagnoli) and TF's mask ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32).
Records are serialized ``PredictionLog`` messages; we use `protos.tessera.warmup_pb2`, which is
wire-compatible with ``tensorflow.serving.PredictionLog`` without registering TensorFlow's names.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import BinaryIO, Final

import numpy as np
from google.protobuf.message import DecodeError

from exporter.errors import BundleError, ExportError
from exporter.tensor_encode import array_to_proto
from protos.tessera import warmup_pb2

WARMUP_FILE: Final = "tf_serving_warmup_requests"
MAX_RECORDS: Final = 1000  # TF Serving refuses a warmup file with more records (INVALID_ARGUMENT)
_MASK_DELTA: Final = 0xA282EAD8
_HEADER: Final = struct.Struct("<QI")
_FOOTER: Final = struct.Struct("<I")


def _make_table() -> tuple[int, ...]:
    # Reflected CRC-32C polynomial 0x1EDC6F41 -> 0x82F63B78. A byte-wise table is plenty for
    # warmup files (kilobytes); no extra dependency needed.
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE: Final = _make_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of `data`; ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: a CRC stored next to the data it covers is itself hard to checksum."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def encode_records(payloads: Iterable[bytes]) -> bytes:
    """TFRecord bytes for the given payloads. More than 1000 records is an `ExportError`."""
    chunks: list[bytes] = []
    for count, payload in enumerate(payloads, start=1):
        if count > MAX_RECORDS:
            raise ExportError(f"more than {MAX_RECORDS} warmup records: TF Serving would refuse the file")
        payload = bytes(payload)
        length = struct.pack("<Q", len(payload))
        chunks += [length, struct.pack("<I", masked_crc32c(length)), payload, _FOOTER.pack(masked_crc32c(payload))]
    return b"".join(chunks)


def write_records(path_or_file: str | os.PathLike[str] | BinaryIO, payloads: Iterable[bytes]) -> None:
    """Writes payloads as a TFRecord file to a local path or a binary file object."""
    data = encode_records(payloads)
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
    else:
        with open(path_or_file, "wb") as f:
            f.write(data)


def read_records(path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview) -> list[bytes]:
    """The payloads of a TFRecord file (a local path) or of TFRecord bytes.

    Both CRCs of every record are verified. Raises `BundleError` on a bad CRC, a truncated record
    or more than 1000 records.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, where = bytes(path_or_bytes), "warmup data"
    else:
        with open(path_or_bytes, "rb") as f:
            data, where = f.read(), os.fspath(path_or_bytes)
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        index = len(records)
        if index >= MAX_RECORDS:
            raise BundleError(f"{where}: more than {MAX_RECORDS} warmup records")
        if pos + _HEADER.size > len(data):
            raise BundleError(f"{where}: record {index}: truncated header")
        length, length_crc = _HEADER.unpack_from(data, pos)
        if masked_crc32c(data[pos : pos + 8]) != length_crc:
            raise BundleError(f"{where}: record {index}: corrupt length (CRC mismatch)")
        start = pos + _HEADER.size
        end = start + length
        if end + _FOOTER.size > len(data):
            raise BundleError(f"{where}: record {index}: truncated payload")
        payload = data[start:end]
        (payload_crc,) = _FOOTER.unpack_from(data, end)
        if masked_crc32c(payload) != payload_crc:
            raise BundleError(f"{where}: record {index}: corrupt payload (CRC mismatch)")
        records.append(payload)
        pos = end + _FOOTER.size
    return records


def encode_warmup(logs: Iterable[warmup_pb2.PredictionLog]) -> bytes:
    """The bytes of a warmup file (for ``assets_extra={WARMUP_FILE: ...}`` of `write_bundle`)."""
    return encode_records(log.SerializeToString(deterministic=True) for log in logs)


def read_warmup(path_or_bytes: str | os.PathLike[str] | bytes) -> list[warmup_pb2.PredictionLog]:
    """Parses every record of a warmup file as a PredictionLog; `BundleError` if one does not parse."""
    logs = []
    for index, payload in enumerate(read_records(path_or_bytes)):
        log = warmup_pb2.PredictionLog()
        try:
            log.ParseFromString(payload)
        except DecodeError as exc:
            raise BundleError(f"warmup record {index} is not a PredictionLog ({exc})") from None
        logs.append(log)
    return logs


def _model_spec(spec: warmup_pb2.ModelSpec, model_name: str, signature_name: str) -> None:
    if model_name:
        spec.name = model_name
    if signature_name:
        spec.signature_name = signature_name


def predict_log(
    signature_name: str, inputs: Mapping[str, np.ndarray], model_name: str = ""
) -> warmup_pb2.PredictionLog:
    """A PredictionLog holding a PredictRequest with the given input tensors."""
    log = warmup_pb2.PredictionLog()
    request = log.predict_log.request
    _model_spec(request.model_spec, model_name, signature_name)
    for alias, value in inputs.items():
        array_to_proto(np.asarray(value), request.inputs[alias])
    return log


def classify_log(
    signature_name: str, serialized_examples: Sequence[bytes], model_name: str = ""
) -> warmup_pb2.PredictionLog:
    """A PredictionLog holding a ClassificationRequest over serialized tf.Examples."""
    log = warmup_pb2.PredictionLog()
    request = log.classify_log.request
    _model_spec(request.model_spec, model_name, signature_name)
    request.input.example_list.SetInParent()  # present even when empty, as a client would send it
    request.input.example_list.examples.extend(bytes(e) for e in serialized_examples)
    return log


def regress_log(
    signature_name: str, serialized_examples: Sequence[bytes], model_name: str = ""
) -> warmup_pb2.PredictionLog:
    """A PredictionLog holding a RegressionRequest over serialized tf.Examples."""
    log = warmup_pb2.PredictionLog()
    request = log.regress_log.request
    _model_spec(request.model_spec, model_name, signature_name)
    request.input.example_list.SetInParent()  # present even when empty, as a client would send it
    request.input.example_list.examples.extend(bytes(e) for e in serialized_examples)
    return log
