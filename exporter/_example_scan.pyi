# Types of the C extension exporter/_example_scan.c (its header comment is the contract).
from typing import Any

# (example, key rank or -1, code, kind found, count found)
ScanError = tuple[int, int, int, int, int]
# (values: bytearray of float32/int64, or a list of bytes; lengths; indices or None; width)
KeyValues = tuple[bytearray | list[bytes], bytes, bytearray | None, int]

def parse(blobs: list[bytes], keys: tuple[tuple[bytes, int, int, Any], ...]) -> tuple[ScanError | None, list[KeyValues]]: ...
