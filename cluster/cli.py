"""The `tessera` command (console script ``cluster.cli:main``): a small dispatcher.

Subcommands:
- ``inspect`` and ``run`` come from `exporter.cli` (offline: no Ray, no gRPC);
- ``serve`` (the cluster itself) is registered below by the serving code when it exists.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from exporter import cli as exporter_cli


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: serve TF Serving-style model bundles on Ray; inspect and run bundles.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exporter_cli.add_commands(subparsers)
    # `serve` goes here: a function that adds its subparser with set_defaults(func=...), imported
    # lazily inside that function so `tessera inspect` never pays for importing Ray and gRPC.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default: sys.argv[1:]) and runs the chosen subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    return exporter_cli.dispatch(args)


if __name__ == "__main__":
    raise SystemExit(main())
