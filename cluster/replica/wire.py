"""The data plane's wire format: requests and results between a gateway and a replica.

Each message is one frame: `u32 length | u64 call id | u32 header length | JSON header | payload`.
The header names the call's model (a replica host serves many; one connection per host carries
calls for all of them) and lists every tensor (alias, dtype, shape, byte length); the payload holds their bytes
back to back, so numeric arrays are written and read with one copy and no pickle: nothing a peer
sends is ever executed. DT_STRING tensors (object arrays of bytes) travel as u32-length-prefixed
items. Errors travel as (class name, message) and come back as `cluster.errors` instances.

A frame over `stream.BIG` bytes goes as parts, so that it never holds a connection to itself: each
part is `u32 (PART | n) | u32 body length | n bytes`, the frame's body (everything after its length
field) cut in order. A connection carries one big frame's parts at a time, and whole small frames
between them: a small call to one model waits for at most one part of another model's 100 MB call
or answer, never for all of it (`stream.FrameWriter`, `stream.FrameParser`).

A connection opens with a challenge: the replica sends `MAGIC | 16-byte nonce`, the gateway answers
HMAC-SHA256(cluster secret, nonce), and the replica compares it in constant time and answers one
byte, ACCEPTED, before any frame is read; the secret itself never crosses the network. A frame
header `{"ping": 1}` is answered at once with `{"pong": 1}` (liveness while calls run).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from cluster import errors
from cluster.replica.contract import RunResult, Target
from exporter.signature import Tensors

FRAME = struct.Struct("<IQI")  # total length after this field, call id, header length
FRAME_LENGTH = struct.Struct("<I")
_U32 = struct.Struct("<I")
_PIECE = 1 << 20  # bytes; an object tensor's items are joined in pieces of about this size
MAX_FRAME = 2**31 - 1  # what the length field can say; the configured limit is lower
PART = 1 << 31  # the length field's top bit: a part of a big frame follows
PART_HEAD = struct.Struct("<II")  # PART | this part's length, the whole body's length
DEFAULT_MAX_FRAME = 1 << 30  # --data_plane_max_frame_bytes
MAGIC = b"TSDP1"
NONCE_BYTES = 16
CHALLENGE_BYTES = len(MAGIC) + NONCE_BYTES
PROOF_BYTES = hashlib.sha256().digest_size
ACCEPTED = b"\x01"
PING = {"ping": 1}
PONG = {"pong": 1}
# One encoder for every frame: json.dumps with its own separators builds a new one per call. A
# header is never circular: the check's bookkeeping is skipped.
_HEADER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_DECODER = json.JSONDecoder()  # json.loads' own, without its checks of the argument's type


def _string_pieces(items: np.ndarray) -> list[bytes]:
    """An object tensor's items, u32-length-prefixed, joined into pieces of about `_PIECE` bytes.
    One join of the whole tensor is one C call that holds the GIL for as long as a copy of it
    (155 ms for 95 MiB of 96-byte items measured on 2 busy cores): the event loop would wait that
    long for this worker thread; between two pieces it gets its turn. An item of `_PIECE` bytes or
    more is a piece of its own, not copied."""
    pieces: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for value in items:
        item = bytes(value)
        if len(item) >= _PIECE:
            pieces.extend([b"".join(batch), _U32.pack(len(item)), item])
            batch, size = [], 0
            continue
        batch += (_U32.pack(len(item)), item)
        size += 4 + len(item)
        if size >= _PIECE:
            pieces.append(b"".join(batch))
            batch, size = [], 0
    pieces.append(b"".join(batch))
    return [p for p in pieces if p] or [b""]


def _encode_tensors(tensors: Tensors, chunks: list[bytes | memoryview]) -> list[list[Any]]:
    specs = []
    for alias, array in tensors.items():
        if array.dtype.hasobject:  # an object tensor (`dtype == object` converts `object` each time)
            pieces = _string_pieces(array.reshape(-1))
            specs.append([alias, "O", list(array.shape), sum(map(len, pieces))])
            chunks.extend(pieces)
        else:
            data = np.ascontiguousarray(array)  # (a 0-d array comes out of it 1-d, as it always has)
            nbytes = data.nbytes
            specs.append([alias, data.dtype.str, list(data.shape), nbytes])
            chunks.append(data.data.cast("B") if nbytes else b"")
    return specs


_DTYPES: dict[str, np.dtype[Any]] = {}  # a header's dtype string -> its numpy dtype, parsed once


def _dtype(name: str) -> np.dtype[Any]:
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = np.dtype(name)  # raises for what is not a dtype (np.frombuffer, for an object dtype)
        if len(_DTYPES) < 256:  # a peer cannot grow it without bound
            _DTYPES[name] = dtype
    return dtype


def _decode_tensors(specs: list[list[Any]], payload: memoryview, offset: int) -> tuple[dict[str, np.ndarray], int]:
    out: dict[str, np.ndarray] = {}
    for alias, dtype, shape, nbytes in specs:
        raw = payload[offset : offset + nbytes]
        offset += nbytes
        if dtype == "O":
            items, pos = [], 0
            while pos < nbytes:
                (size,) = _U32.unpack_from(raw, pos)
                items.append(bytes(raw[pos + 4 : pos + 4 + size]))
                pos += 4 + size
            array = np.empty(len(items), dtype=object)
            array[:] = items
            out[alias] = array.reshape(shape)
        else:
            out[alias] = np.frombuffer(raw, dtype=_dtype(dtype)).reshape(shape)
    return out, offset


def proof(secret: bytes, nonce: bytes) -> bytes:
    """What a gateway sends back for the replica's challenge `nonce`."""
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def check_proof(secret: bytes, nonce: bytes, answer: bytes) -> bool:
    return hmac.compare_digest(proof(secret, nonce), answer)  # constant time


def _frame(
    call_id: int, header: dict[str, Any], chunks: list[bytes | memoryview], limit: int = MAX_FRAME
) -> list[bytes | memoryview]:
    head = _HEADER.encode(header).encode()
    total = FRAME.size - 4 + len(head) + sum(map(len, chunks))
    if total > min(limit, MAX_FRAME):
        raise errors.ResourceExhausted(f"message of {total} bytes is larger than the limit of {min(limit, MAX_FRAME)}")
    return [FRAME.pack(total, call_id, len(head)), head, *chunks]


def control_frame(call_id: int, header: dict[str, Any]) -> list[bytes | memoryview]:
    """A frame with a header and no tensors (ping, pong)."""
    return _frame(call_id, header, [])


def encode_call(
    call_id: int,
    model: str,
    version: int,
    signature: Target,
    requests: Sequence[Tensors],
    output_filter: Sequence[str],
    timeouts: Sequence[float | None] | None,
    limit: int = MAX_FRAME,
) -> list[bytes | memoryview]:
    chunks: list[bytes | memoryview] = []
    header = {
        "model": model,
        "version": version,
        "signature": signature if isinstance(signature, str) else list(signature),  # a list: Tasks
        "output_filter": list(output_filter),
        "timeouts": None if timeouts is None else list(timeouts),
        "requests": [_encode_tensors(r, chunks) for r in requests],
    }
    return _frame(call_id, header, chunks, limit)


Call = tuple[str, int, Target, list[dict[str, np.ndarray]], tuple[str, ...], list[float | None] | None]


def decode_call(header: dict[str, Any], payload: memoryview) -> Call:
    """(model, version, signature or tasks, requests, output filter, timeouts) of a call's frame."""
    requests, offset = [], 0
    for specs in header["requests"]:
        tensors, offset = _decode_tensors(specs, payload, offset)
        requests.append(tensors)
    model = header["model"]
    if not isinstance(model, str):
        raise errors.InvalidArgument("a data-plane call names its model")
    signature = header["signature"]
    if isinstance(signature, list) and all(isinstance(key, str) for key in signature):
        signature = tuple(signature)
    elif not isinstance(signature, str):
        raise errors.InvalidArgument("a data-plane call names its signature, or its tasks' signatures")
    return model, header["version"], signature, requests, tuple(header["output_filter"]), header["timeouts"]


def encode_results(
    call_id: int, results: Sequence[RunResult | BaseException], limit: int = MAX_FRAME
) -> list[bytes | memoryview]:
    """One call's answer; an exception that is not a ServingError travels as Internal."""
    chunks: list[bytes | memoryview] = []
    entries: list[Any] = []
    for result in results:
        if isinstance(result, BaseException):
            kind = type(result).__name__ if isinstance(result, errors.ServingError) else "Internal"
            entries.append({"error": [kind, str(result)]})
        else:
            entries.append({"tensors": _encode_tensors(result, chunks)})
    return _frame(call_id, {"results": entries}, chunks, limit)


def error_of(kind: str, message: str) -> errors.ServingError:
    """The error a frame names by class: a `cluster.errors` class, or Internal for any other name
    (a peer's name never reaches anything but this lookup)."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ServingError)):
        cls = errors.Internal
    return cls(message)


def decode_results(header: dict[str, Any], payload: memoryview) -> list[RunResult]:
    results: list[RunResult] = []
    offset = 0
    for entry in header["results"]:
        if "error" in entry:
            results.append(error_of(*entry["error"]))
        else:
            tensors, offset = _decode_tensors(entry["tensors"], payload, offset)
            results.append(tensors)
    return results


def encode_failure(call_id: int, error: BaseException) -> list[bytes | memoryview]:
    """A whole call refused (e.g. a frame that does not decode): the gateway fails every request."""
    kind = type(error).__name__ if isinstance(error, errors.ServingError) else "Internal"
    return _frame(call_id, {"failure": [kind, str(error)]}, [])


def split_frame(body: memoryview) -> tuple[int, dict[str, Any], memoryview]:
    """A frame's body (after the length field) -> call id, header, payload."""
    call_id, header_len = struct.unpack_from("<QI", body, 0)
    start = 12
    # Decoded to str first: json.loads of bytes sniffs their encoding in Python on every frame.
    header = _DECODER.decode(str(body[start : start + header_len], "utf-8"))
    return call_id, header, body[start + header_len :]
