"""A big Classify (100 MB of examples) is cut out of its bytes without holding the event loop, and
the cut means what protobuf's parse means (`examples_bytes.cut_examples` against the upb path)."""

from __future__ import annotations

import asyncio

import pytest

from cluster import errors
from cluster.gateway import converters
from cluster.gateway.converters import examples_bytes
from cluster.requests import ExamplesRequest
from exporter.protobuf_wire import field
from tests.loop_testlib import collector_paused, gaps_at_rest, one_copy_seconds
from tests.loop_testlib import ticker as loop_ticker

SPEC = field(1, field(1, b"m"))  # ModelSpec {name: "m"}


def _example(i: int) -> bytes:
    # Only framed, never decoded by the gateway: any bytes stand for an Example here.
    return b"ex%07d" % i + b"z" * 90


def _list(examples: list[bytes]) -> bytes:
    return field(1, b"".join(field(1, e) for e in examples))  # Input {example_list {examples}}


def _with_context(examples: list[bytes], context: bytes) -> bytes:
    body = b"".join(field(1, e) for e in examples) + field(2, context)
    return field(2, body)  # Input {example_list_with_context {examples, context}}


def test_a_100_mb_classify_is_cut_without_holding_the_loop_for_a_copy_of_itself() -> None:
    examples = [_example(i) for i in range(1_000_000)]
    raw = SPEC + field(2, _list(examples))
    assert len(raw) >= 100_000_000
    copy = one_copy_seconds(raw)

    async def main() -> tuple[list[float], list[float], ExamplesRequest]:
        baseline = await gaps_at_rest()
        gaps: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.get_running_loop().create_task(loop_ticker(gaps, stop))
        got = await asyncio.to_thread(converters.examples_request, raw)  # as the servicer converts it
        stop.set()
        await ticker
        return baseline, gaps, got

    with collector_paused():
        baseline, gaps, got = asyncio.run(main())
    assert got.examples == examples and got.spec.name == "m"
    # protobuf's path held the loop for about two copies (250 ms against 122 ms for one, measured):
    # the top-level fields, then the SerializedInput parse; the cut holds it for slices of examples.
    bound = max(baseline) + copy
    assert max(gaps) < bound, (
        f"the loop was held for {max(gaps) * 1000:.0f} ms; one copy of the message takes "
        f"{copy * 1000:.0f} ms, the loop's worst gap at rest {max(baseline) * 1000:.0f} ms"
    )


def _messages() -> list[bytes]:
    few = [_example(i) for i in range(3)]
    filler = [_example(i) for i in range(12_000)]  # past CUT_BYTES
    unknown = b"\x18\x07" + field(9, b"?")  # a varint field 3 and an unknown field 9: ignored
    return [
        SPEC + field(2, _list(filler)),
        SPEC + field(2, _with_context(filler, b"ctx")),
        SPEC + field(2, _with_context(filler, b"")),
        field(2, _list(filler)) + SPEC + unknown,  # field order and unknown fields do not matter
        SPEC + field(2, _list(filler)) + field(1, field(3, b"sig")),  # the spec sent twice merges
        SPEC + field(2, _list(filler) + unknown),
        SPEC + field(2, field(1, b"".join(field(1, e) for e in filler) + unknown)),  # unknown in the list
        SPEC + field(2, _list(filler)) + field(2, _list(few)),  # input twice: protobuf merges
        SPEC + field(2, _list(few) + _with_context(filler, b"c")),  # both kinds: the oneof's last wins
        SPEC + field(2, field(2, field(2, b"a") + b"".join(field(1, e) for e in filler) + field(2, b"b"))),  # context twice
        SPEC + field(2, field(1, b"")) + b"\x00" * 1_100_000,  # not a message
        SPEC + field(2, _list(filler))[:-3],  # cut off inside an example
        field(2, _list(filler)),  # no spec
        SPEC + field(2, field(1, b"") + b"\x18\x01" * 600_000),  # an empty list: Input is empty
    ]


def _outcome(fn: object, raw: bytes) -> object:
    try:
        got = converters.examples_request(raw) if fn is None else fn(raw)  # type: ignore[operator]
    except errors.InvalidArgument as exc:
        return ("InvalidArgument", str(exc))
    return (got.spec, got.examples, got.context)


@pytest.mark.parametrize("raw", _messages(), ids=[
    "list", "context", "empty_context", "order_unknown", "spec_twice", "unknown_in_input", "unknown_in_list",
    "input_twice", "both_kinds", "context_twice", "not_a_message", "cut_off", "no_spec", "empty"])
def test_the_cut_means_what_protobufs_parse_means(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(raw) >= examples_bytes.CUT_BYTES
    got = _outcome(None, raw)
    monkeypatch.setattr(examples_bytes, "CUT_BYTES", len(raw) + 1)  # protobuf's path for this message
    want = _outcome(None, raw)
    assert got == want


def test_the_cut_takes_the_usual_messages_and_leaves_the_unusual_to_protobuf() -> None:
    messages = _messages()
    assert [examples_bytes.cut_examples(m) is not None for m in messages] == [
        True, True, True, True, True, True, True, False, False, False, False, False, True, True]
    fields, examples, context = examples_bytes.cut_examples(messages[1])  # type: ignore[misc]
    assert fields == {1: [SPEC[2:]]} and context == b"ctx" and examples[-1] == _example(11_999)


def test_multi_inference_takes_the_same_cut() -> None:
    task = field(1, field(1, b"m")) + field(2, b"tensorflow/serving/classify")
    raw = field(1, task) + field(2, _with_context([_example(i) for i in range(12_000)], b"ctx"))
    got = converters.multi_inference_request(raw)
    assert [(t.spec.name, t.method) for t in got.tasks] == [("m", "tensorflow/serving/classify")]
    assert got.context == b"ctx" and len(got.examples) == 12_000
