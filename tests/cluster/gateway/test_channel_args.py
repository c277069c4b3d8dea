"""TF Serving's `--grpc_channel_arguments` syntax (server.cc's ParseGrpcChannelArgs and its
SimpleAtoi: a value that reads as an int32 goes to gRPC as an int, any other as a string)."""

from __future__ import annotations

import pytest

from cluster.gateway.channel_args import parse_grpc_channel_arguments


@pytest.mark.parametrize(("text", "expected"), [
    ("", ()),
    ("grpc.max_connection_age_ms=30000", (("grpc.max_connection_age_ms", 30000),)),
    ("a=1,b=x", (("a", 1), ("b", "x"))),
    (" a = -7 , b=+3,", (("a", -7), ("b", 3))),  # spaces stripped, a trailing comma skipped
    ("a=2147483647,b=2147483648", (("a", 2**31 - 1), ("b", "2147483648"))),  # past int32: a string
    ("a=1.5,b=0x10,c=", (("a", "1.5"), ("b", "0x10"), ("c", ""))),
    ("a=k=v", (("a", "k=v"),)),
    ("a=1,a=2", (("a", 1), ("a", 2))),  # both, in order (gRPC keeps the first)
])
def test_parse(text: str, expected: tuple[tuple[str, int | str], ...]) -> None:
    assert parse_grpc_channel_arguments(text) == expected


@pytest.mark.parametrize("text", ["a", "a=1,b", "=1", " =1"])
def test_an_item_without_a_key_and_value_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="expected key=value"):
        parse_grpc_channel_arguments(text)
