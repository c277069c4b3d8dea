"""`tessera import SAVED_MODEL_PATH DEST_BASE_PATH`: TensorFlow SavedModels -> Tessera bundles.

Also ``python -m exporter.importers.savedmodel_cli SRC DEST``: the process a server starts to
import a version it found (exporter.importers.savedmodel_cache), so TensorFlow is never loaded in a
serving process. Exit status 0 on success, 1 with a one-line ``error: ...`` on stderr otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from exporter.errors import ExporterError


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `import` on a parser's subparsers (exporter.cli registers it for `tessera`)."""
    parser = subparsers.add_parser(
        "import", help="import TensorFlow SavedModels as Tessera bundles (needs the tensorflow extra)",
        description="SAVED_MODEL_PATH is a SavedModel version directory (<base>/<version>/saved_model.pb) "
        "or a base path holding several versions; each becomes a bundle under DEST_BASE_PATH with the "
        "same version number and every signature (key, method, aliases, dtypes, shapes). Local paths or "
        "pyarrow.fs URIs. Versions already in DEST_BASE_PATH are left as they are. "
        "Needs: pip install 'tessera-serving[tensorflow]'.",
    )  # fmt: skip
    parser.add_argument("source", metavar="SAVED_MODEL_PATH", help="SavedModel version directory or base path")
    parser.add_argument("dest", metavar="DEST_BASE_PATH", help="base path the bundles are published under")
    parser.set_defaults(func=import_command)


def import_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Imports and prints one line per version."""
    from exporter.importers.savedmodel import import_saved_model

    out = out or sys.stdout
    for result in import_saved_model(args.source, args.dest):
        if result.imported:
            print(f"version {result.version}: imported to {result.path} "
                  f"(signatures: {', '.join(result.signatures)})", file=out)  # fmt: skip
        else:
            print(f"version {result.version}: already in {result.path}, left as it is", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exporter.importers.savedmodel_cli")
    parser.add_argument("source")
    parser.add_argument("dest")
    args = parser.parse_args(argv)
    try:
        return import_command(args)
    except (ExporterError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
