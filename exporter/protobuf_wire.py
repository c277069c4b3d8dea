"""Protobuf's wire format, the few pieces we write or read by hand: varints, tags, length-delimited
fields. Used where going through a message would copy or parse what we only pass along (big
tensor fields, Predict answers, a tf.Example context cut down to the features a parser reads).
"""

from __future__ import annotations

from typing import Final

VARINT: Final = 0
FIXED64: Final = 1
LENGTH_DELIMITED: Final = 2  # bytes, strings, messages and packed repeated fields
FIXED32: Final = 5


def encode_varint(value: int) -> bytes:
    """`value` (non-negative, below 2**64) as a base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; ValueError if it is cut short or too long."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def tag(number: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    return encode_varint(number << 3 | wire_type)


def field(number: int, payload: bytes) -> bytes:
    """A whole length-delimited field: tag, length, payload."""
    return tag(number) + encode_varint(len(payload)) + payload


def field_size(number: int, size: int) -> int:
    """The bytes a length-delimited field of a `size`-byte payload takes."""
    return len(tag(number)) + len(encode_varint(size)) + size


def length_delimited_fields(data: bytes) -> list[tuple[int, bytes]]:
    """The (field number, bytes) of a message's length-delimited fields, in order; others skipped.
    ValueError for a malformed message."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        wire = key & 7
        if wire == VARINT:
            _, pos = decode_varint(data, pos)
        elif wire == FIXED64:
            pos += 8
        elif wire == FIXED32:
            pos += 4
        elif wire == LENGTH_DELIMITED:
            size, pos = decode_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            out.append((key >> 3, data[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
    return out
