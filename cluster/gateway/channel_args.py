"""TF Serving's `--grpc_channel_arguments`: extra gRPC arguments for the gateway's server.

    parse_grpc_channel_arguments("grpc.max_connection_age_ms=30000,grpc.max_connection_age_grace_ms=30000")
    # (("grpc.max_connection_age_ms", 30000), ("grpc.max_connection_age_grace_ms", 30000))

TF Serving's syntax: a comma-separated list of `key=value`; a value that reads as a 32-bit integer
goes to gRPC as an int, any other as a string (gRPC ignores keys it does not know, as TF's does).
Stricter than TF where TF would crash or guess: an item without `=` or with an empty key is an
error; empty items (a trailing comma) are skipped; keys and values are stripped of spaces; a value
may contain `=` (TF keeps only the text up to a second `=`).

The argument that balances long-lived clients over gateways is `grpc.max_connection_age_ms`: the
server sends GOAWAY to each connection after that age (gRPC adds ±10 % jitter), in-flight calls get
`grpc.max_connection_age_grace_ms` more, and the client opens a new connection for its next calls,
which the kernel (SO_REUSEPORT) or a Kubernetes Service may give to another gateway.
"""

from __future__ import annotations

from typing import Final

ChannelArguments = tuple[tuple[str, int | str], ...]

_INT32: Final = range(-(2**31), 2**31)


def _value(text: str) -> int | str:
    # TF's absl::SimpleAtoi into an int: decimal, optional sign, within int32.
    body = text[1:] if text[:1] in "+-" else text
    if body.isdigit() and body.isascii() and int(text) in _INT32:
        return int(text)
    return text


def parse_grpc_channel_arguments(text: str) -> ChannelArguments:
    """The (key, value) pairs of a `--grpc_channel_arguments` value, in order; ValueError if an
    item has no `=` or an empty key."""
    pairs: list[tuple[str, int | str]] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"expected key=value, got {item.strip()!r}")
        pairs.append((key, _value(value.strip())))
    return tuple(pairs)
