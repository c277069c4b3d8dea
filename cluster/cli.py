"""The `tessera` command (console script ``cluster.cli:main``): a small dispatcher.

Subcommands:
- ``inspect`` and ``run`` come from `exporter.cli` (offline: no Ray, no gRPC);
- ``serve`` (the cluster itself) takes TF Serving's flags (``--port=8500 --model_base_path=...``),
  parsed by `cluster.flags`; it is dispatched before argparse so those flags pass through untouched;
- ``gateway`` runs only a gateway that joins a running cluster's controller (``--ray_address``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered."""
    from exporter import cli as exporter_cli  # imported here: see main()

    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera: serve TF Serving-style model bundles on Ray; inspect and run bundles.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    exporter_cli.add_commands(subparsers)
    # `serve` is dispatched in main() before this parser runs; listed here for --help.
    subparsers.add_parser("serve", help="serve models over TF Serving's gRPC and REST APIs (tessera serve --help)")
    subparsers.add_parser("gateway", help="serve the gRPC and REST APIs of a running cluster: joins its controller (tessera gateway --help)")
    subparsers.add_parser("batch-predict", help="run a model over Parquet/CSV/JSON/TFRecord files on Ray (tessera batch-predict --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv` (default: sys.argv[1:]) and runs the chosen subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["serve"], ["gateway"]):
        # Before anything starts a thread (importing numpy starts OpenBLAS's): glibc fixes the
        # number of malloc arenas when a second thread first allocates (see cluster.heap).
        from cluster import heap

        heap.one_arena()
    if argv[:1] == ["serve"]:
        # Imported lazily: `tessera inspect` never pays for importing Ray and gRPC.
        from cluster import commands

        return commands.serve_main(argv[1:])
    if argv[:1] == ["gateway"]:
        from cluster import commands

        return commands.gateway_main(argv[1:])
    if argv[:1] == ["batch-predict"]:
        from cluster.batch_predict import predict

        return predict.main(argv[1:])
    from exporter import cli as exporter_cli

    args = build_parser().parse_args(argv)
    return exporter_cli.dispatch(args)


if __name__ == "__main__":
    raise SystemExit(main())
