"""JSON values <-> numpy arrays for the REST API, with TF Serving's typing rules (spec §8.5-8.6).

Fast on purpose: a tensor is built from the parsed JSON by one `np.asarray` (shape from the nesting)
and its dtype checked against the signature on the whole array, never element by element (strings
excepted: each must be encoded). Floats leave through `shortest_floats`, a vectorised shortest
round-trip formatter, and the stdlib `json` encoder (which writes `3.0`, `NaN`, `Infinity`).

Known gap: numpy folds a `true` among numbers into 1, so `[1, true]` is accepted for a numeric input
(TF refuses it); a bool-only list for a numeric input is refused, as in TF.

Also what every request body shares: the document must be an object (`request_object`), its
"signature_name" a string (`body_signature_name`), its strings encodable (`text_checked`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar

import numpy as np

from cluster.errors import InvalidArgument, Unimplemented
from exporter import dtypes

_SUPPORTED: Final = frozenset(
    {dtypes.FLOAT, dtypes.DOUBLE, dtypes.INT32, dtypes.INT16, dtypes.INT8, dtypes.UINT8, dtypes.INT64,
     dtypes.UINT32, dtypes.UINT64, dtypes.BOOL, dtypes.STRING}
)
# A string literal (skipped as is) or a bare Inf token that the stdlib parser does not know.
_INF_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)\bInf\b')

# ---------------------------------------------------------------------------------------------
# JSON in


def _b64_hook(obj: dict[str, Any]) -> Any:
    # `{"b64": "<base64>"}` is a binary string wherever it appears (spec §8.5): decoding it while
    # parsing means the converters below only ever see str or bytes for string values.
    if len(obj) == 1 and isinstance(obj.get("b64"), str):
        text = obj["b64"]
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"Unable to base64 decode: {text[:64]}") from None
    return obj


def loads(body: bytes) -> Any:
    """Parses a request body; NaN, Infinity, -Infinity, Inf and -Inf are numbers, b64 objects bytes."""
    try:
        return _parse(body)
    except json.JSONDecodeError as exc:
        error = exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"JSON Parse error: the body is not UTF-8 text ({exc.reason})") from None
    # Only a failed parse pays for the Inf rewrite (a token TF's parser accepts and json does not).
    text = body.decode("utf-8", "replace")
    fixed = _INF_TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else f"{m.group(1)}Infinity", text)
    if fixed != text:
        try:
            return _parse(fixed)
        except json.JSONDecodeError:
            pass
    raise InvalidArgument(f"JSON Parse error: {error.msg} at offset: {error.pos}")


def _parse(text: bytes | str) -> Any:
    """json.loads, with the documents it refuses by other exceptions than JSONDecodeError as 400s."""
    try:
        return json.loads(text, object_hook=_b64_hook)
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document is nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
            raise
        # Python refuses to convert integers of more than 4,300 digits (CVE-2020-10735): quadratic.
        raise InvalidArgument("JSON Parse error: a number has too many digits") from None


def to_array(value: Any, dtype: int, alias: str, *, rows: bool = False) -> np.ndarray:
    """A JSON value (scalar or rectangular nested lists) as an array of the signature's `dtype`."""
    if dtype not in _SUPPORTED:
        raise Unimplemented(f"Conversion of JSON Value to tensor of type {_dtype_name(dtype)} is not supported")
    if dtype == dtypes.STRING:
        return _strings(value, alias, rows)
    try:
        array = np.asarray(value)
    except ValueError:
        raise _ragged(alias, rows) from None
    kind = array.dtype.kind
    target = dtypes.to_numpy(dtype)
    if array.size == 0 and kind in "fiub":
        return array.astype(target)
    if dtype in dtypes.FLOATING:
        ok = kind in "iuf"
    elif dtype == dtypes.BOOL:
        ok = kind == "b"
    else:
        # A 1.0 (or 2**64, which numpy keeps as objects) for an integer input is a type error.
        info = np.iinfo(target)
        ok = kind in "iu" and (array.size == 0 or (array.min() >= info.min and array.max() <= info.max))
    if not ok:
        if kind == "O" and _has_list(value):
            raise _ragged(alias, rows)
        raise InvalidArgument(f"JSON value of input '{alias}' is not of expected type: {_expected(dtype)}")
    return array.astype(target, copy=False)


def _strings(value: Any, alias: str, rows: bool) -> np.ndarray:
    array = np.array(value, dtype=object)  # ragged lists stay lists here: caught element by element
    flat = array.ravel().tolist()
    for i, item in enumerate(flat):
        if type(item) is str:
            flat[i] = item.encode()
        elif type(item) is not bytes:
            if isinstance(item, list):
                raise _ragged(alias, rows)
            raise InvalidArgument(f"JSON value of input '{alias}' is not of expected type: {_expected(dtypes.STRING)}")
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


def _has_list(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, list) for v in value)


def _ragged(alias: str, rows: bool) -> InvalidArgument:
    if rows:
        return InvalidArgument(f"The instances of input '{alias}' do not all have the same shape")
    return InvalidArgument(f"Input '{alias}' is not a rectangular list: its sub-lists differ in length")


def _dtype_name(dtype: int) -> str:
    try:
        return dtypes.name(dtype)
    except ValueError:
        return f"DataType({dtype})"


def _expected(dtype: int) -> str:
    if dtype == dtypes.STRING:
        return 'string (a JSON string or {"b64": "..."})'
    if dtype in dtypes.FLOATING:
        return f"{_dtype_name(dtype)} (a JSON number)"
    if dtype == dtypes.BOOL:
        return "bool (true or false)"
    return f"{_dtype_name(dtype)} (a JSON integer in its range)"




# ---------------------------------------------------------------------------------------------
# JSON out


# -- request bodies ------------------------------------------------------------------------------
def request_object(body: bytes) -> dict[str, Any]:
    """A request body's JSON document, which must be an object."""
    document = loads(body)
    if not isinstance(document, dict):
        raise InvalidArgument("JSON Parse error: the request body must be a JSON object")
    return document


P = ParamSpec("P")
R = TypeVar("R")


def text_checked(convert: Callable[P, R]) -> Callable[P, R]:
    """A JSON string may escape a lone UTF-16 surrogate (\\ud800), which no UTF-8 text holds: a
    bad request (TF's parser refuses it too), found where the string is encoded, not a server error."""

    @functools.wraps(convert)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return convert(*args, **kwargs)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
            raise InvalidArgument(f"JSON Parse error: a string holds an unpaired surrogate ({bad})") from None

    return checked


def body_signature_name(document: Mapping[str, Any]) -> str:
    """The body's "signature_name" ("" when absent: serving_default)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument("'signature_name' key must be a string value.")
    return name


def dumps(document: Any, indent: int | None = None) -> bytes:
    """A reply body. NaN and ±inf are written as the bare tokens NaN, Infinity, -Infinity (spec §8.6)."""
    return json.dumps(document, ensure_ascii=False, indent=indent).encode()


def error_body(message: str) -> bytes:
    """TF's error reply `{ "error": "<message>" }`, pretty-printed with 4 spaces as TF does (spec §8.3)."""
    return json.dumps({"error": message}, indent=4, ensure_ascii=False).encode()


def shortest_floats(values: np.ndarray) -> np.ndarray:
    """float64 values whose `repr` is the shortest text that reads back as the same float32.

    `json` writes a float with `repr`, which is shortest round-trip for float64; a float32 widened
    to float64 would print as 0.10000000149011612. So each float32 is replaced by the float64
    nearest to its shortest decimal: for |x| in [1e-13, 1e7) by rounding to 1..9 significant
    digits in bulk (an exact power-of-ten division, so correctly rounded; below 2**24 a float32
    has no spacing over 1, so no decimal needs trailing zeros), and for the rest by numpy's
    (slower, also vectorised) shortest `str` conversion.
    """
    values = np.asarray(values, dtype=np.float32)
    x = values.astype(np.float64)
    finite = np.isfinite(x) & (x != 0)
    with np.errstate(all="ignore"):
        exponent = np.floor(np.log10(np.abs(np.where(finite, x, 1.0)))).astype(np.int64)
    pending = finite & (exponent >= -13) & (exponent <= 6)
    slow = finite & ~pending
    out = x.copy()
    for digits in range(1, 10):
        if not pending.any():
            break
        places = np.where(pending, digits - 1 - exponent, 0)
        scale = 10.0 ** np.maximum(places, 0)
        candidate = np.round(x * scale) / scale
        hit = pending & (places >= 0) & (candidate.astype(np.float32) == values)
        out[hit] = candidate[hit]
        pending &= ~hit
    slow |= pending
    if slow.any():
        out[slow] = values[slow].astype(str).astype(np.float64)
    return out


def to_json(alias: str, array: np.ndarray) -> Any:
    """An output tensor as JSON-ready nested lists (a scalar for rank 0).

    DT_STRING outputs are text, except aliases ending in `_bytes`, which are `{"b64": ...}`.
    """
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind == "f":
        if array.dtype == np.float64:
            return array.tolist()
        if array.dtype == np.float32:
            return shortest_floats(array).tolist()
        return array.astype(str).astype(np.float64).tolist()  # float16: shortest as half
    if kind in "iub":
        return array.tolist()
    if kind in "OSU":
        as_b64 = alias.endswith("_bytes")
        flat = [_string_out(item, as_b64, alias) for item in array.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape).tolist()
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {array.dtype} (output {alias})")


def _string_out(item: Any, as_b64: bool, alias: str) -> Any:
    raw = item.encode() if isinstance(item, str) else item
    if not isinstance(raw, bytes):
        raise InvalidArgument(f"Failed to write JSON value for tensor type: string (output {alias} holds a non-string value)")
    if as_b64:
        return {"b64": base64.b64encode(raw).decode("ascii")}
    # A JSON string must be text; binary outputs should use the `_bytes` suffix.
    return raw.decode("utf-8", "replace")
