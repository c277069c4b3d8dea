"""A big Classify, Regress or MultiInference message's examples, cut out of its bytes by hand.

Parsing such a request with protobuf holds the GIL for whole-message C calls: the top-level fields
(`Empty` with every field unknown, then each field's bytes: a copy of the message each) and the
`SerializedInput` with its million examples (~160-220 ms for 100 MB, measured). A worker thread
doing that stalls the event loop's thread just as much (the loop's worst gap was 250 ms against
122 ms for one copy of the message). Here the fields are framed by `exporter._example_scan.spans`,
in C without the GIL, and the examples are sliced out of the message's bytes in chunks, between
which the loop's thread gets the GIL back.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from exporter import _example_scan

# Below this many bytes a message is parsed by protobuf: a few milliseconds at most.
CUT_BYTES = 1 << 20  # not Final: benchmarks/examples_cut.py moves it to compare both paths
_CHUNK: Final = 1 << 15  # examples sliced per step

Cut = tuple[dict[int, list[bytes]], list[bytes], bytes]


def cut_examples(raw: bytes) -> Cut | None:
    """(the other top-level length-delimited fields' bytes by number, the examples, the serialized
    context or b"") of a `{1: ..., 2: Input}` message, as `requests._serialized_examples` reads it.

    None for anything that protobuf must decide (it merges or picks the last): the input field sent
    more than once, both or neither of its kinds, a context sent twice, bytes that are not a
    message; the caller then parses the message as it always did, which refuses what is invalid.
    """
    try:
        top = _spans(raw, 0, len(raw))
        inputs = top[top[:, 0] == 2]
        if len(inputs) != 1:
            return None
        kinds = _spans(raw, int(inputs[0, 1]), int(inputs[0, 2]))
        kinds = kinds[(kinds[:, 0] == 1) | (kinds[:, 0] == 2)]  # example_list, example_list_with_context
        if len(kinds) != 1:
            return None
        kind, start, end = (int(v) for v in kinds[0])
        body = _spans(raw, start, end)
    except ValueError:
        return None
    context = b""
    if kind == 2:  # ExampleListWithContext {1: examples, 2: context}
        contexts = body[body[:, 0] == 2]
        if len(contexts) > 1:
            return None  # a bytes field sent twice: the last one wins, protobuf's call
        if len(contexts):
            context = raw[int(contexts[0, 1]) : int(contexts[0, 2])]
    examples = body[body[:, 0] == 1]  # ExampleList {1: examples}, and the examples beside a context
    others: dict[int, list[bytes]] = {}
    for number, start, end in top[top[:, 0] != 2].tolist():  # few: the spec or the tasks
        others.setdefault(number, []).append(raw[start:end])
    return others, _sliced(raw, examples[:, 1], examples[:, 2]), context


def _spans(raw: bytes, start: int, end: int) -> np.ndarray:
    """(number, start, end) rows of the length-delimited fields of raw[start:end], offsets in raw."""
    rows = np.frombuffer(_example_scan.spans(memoryview(raw)[start:end]), np.int64).reshape(-1, 3)
    return rows + np.array([0, start, start], np.int64)


def _sliced(raw: bytes, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
    out: list[bytes] = []
    for first in range(0, len(starts), _CHUNK):
        pairs = zip(starts[first : first + _CHUNK].tolist(), ends[first : first + _CHUNK].tolist(), strict=True)
        out += [raw[a:b] for a, b in pairs]
    return out
