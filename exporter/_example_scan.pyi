# Types of the C extension exporter/_example_scan.c (its header comment is the contract).
from typing import Any

# (example, key rank or -1, code, kind found, count found)
ScanError = tuple[int, int, int, int, int]
# (values: bytearray of float32/int64, or a list of bytes; lengths; indices or None; width)
KeyValues = tuple[bytearray | list[bytes], bytes, bytearray | None, int]

def parse(blobs: list[bytes], keys: tuple[tuple[bytes, int, int, Any], ...]) -> tuple[ScanError | None, list[KeyValues]]: ...

# The length-delimited top-level fields of a message (any buffer), in wire order, as int64 triples
# (field number, payload start, payload end); other wire types are skipped. ValueError if `data` is
# not a message. Runs without the GIL.
def spans(data: bytes | memoryview) -> bytes: ...
