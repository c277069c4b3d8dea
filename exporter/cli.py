"""`tessera inspect` and `tessera run`: look at bundles and run a signature locally.

Both take a base path (``<base>/<version>/...``) or one version directory, as a local path or a
pyarrow.fs URI. `inspect` reads only MANIFEST.pb and graph.pb (nothing is copied); `run` loads the
whole bundle (remote ones through the local cache) into the numpy runtime.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import pyarrow.fs as pafs

from exporter import bundle as bundle_io
from exporter import dtypes, storage
from exporter.errors import BundleError, ExporterError
from protos.tessera import bundle_pb2


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Registers `inspect` and `run` on a parser's subparsers (used by `cluster.cli`)."""
    inspect = subparsers.add_parser(
        "inspect", help="show the versions of a model, or the signatures of a version",
        description="With a base path: list its versions (--all: and every signature of each). "
        "With one version directory: every signature, its method and inputs/outputs.",
    )
    inspect.add_argument("path", help="base path or version directory (local path or URI)")
    inspect.add_argument("--all", action="store_true", help="show the signatures of every version")
    inspect.add_argument("--signature", help="show only this signature")
    inspect.set_defaults(func=inspect_command)

    run = subparsers.add_parser(
        "run", help="run a signature of a bundle locally and print its outputs as JSON",
        description="PATH is a version directory, or a base path (its newest version is used).",
    )
    run.add_argument("path", help="base path or version directory (local path or URI)")
    run.add_argument("--signature", default="serving_default", help="signature key (default: %(default)s)")
    run.add_argument(
        "--inputs", required=True,
        help='JSON object alias -> nested list, e.g. \'{"x": [[1, 2, 3, 4]]}\'; @FILE reads it from a file',
    )
    run.add_argument("--output-filter", action="append", help="only this output alias (repeatable)")
    run.add_argument("--cache-dir", help="local cache for remote bundles")
    run.set_defaults(func=run_command)


def _is_version_dir(path: str) -> bool:
    fs, root = storage.resolve(path)
    return fs.get_file_info(f"{root.rstrip('/')}/{bundle_io.MANIFEST_FILE}").type == pafs.FileType.File


def _shape_text(shape: bundle_pb2.Shape) -> str:
    if shape.unknown_rank:
        return "unknown_rank"
    return "(" + ", ".join(str(d) for d in shape.dim) + ")"


def print_signatures(meta_graph: bundle_pb2.MetaGraph, out: TextIO, only: str | None = None) -> None:
    """Prints signatures the way `saved_model_cli show --all` does."""
    if meta_graph.tags:
        print(f"tag-set: {', '.join(repr(t) for t in meta_graph.tags)}", file=out)
    keys = sorted(meta_graph.signatures) if only is None else [only]
    for key in keys:
        if key not in meta_graph.signatures:
            raise BundleError(f"no signature {key!r}; there are: {', '.join(sorted(meta_graph.signatures))}")
        sig = meta_graph.signatures[key]
        print(f"\nsignature_def[{key!r}]:", file=out)
        for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
            print(f"  The given SignatureDef contains the following {kind}(s):", file=out)
            for alias in sorted(specs):
                spec = specs[alias]
                print(f"    {kind}s[{alias!r}] tensor_info:", file=out)
                print(f"        dtype: {bundle_pb2.DType.Name(spec.dtype)}", file=out)
                print(f"        shape: {_shape_text(spec.shape)}", file=out)
                print(f"        name: {spec.name}", file=out)
        print(f"  Method name is: {sig.method_name}", file=out)


def inspect_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`tessera inspect PATH [--all] [--signature S]`."""
    out = out or sys.stdout  # looked up per call, so a redirected sys.stdout is honoured
    if _is_version_dir(args.path):
        _, meta_graph = bundle_io.read_meta_graph(args.path)
        print(f"version directory {args.path}", file=out)
        print_signatures(meta_graph, out, args.signature)
        return 0
    versions = storage.list_versions(args.path)
    if not versions:
        print(
            f"No versions found under base path {args.path}. "
            "Did you forget to name your leaf directory as a number (eg. '/1/')?",
            file=out,
        )
        return 1
    print(f"The base path {args.path} contains the following versions:", file=out)
    status = 0
    for version, fs_path in versions.items():
        location = storage.join(args.path, fs_path.rsplit("/", 1)[-1])
        try:
            _, meta_graph = bundle_io.read_meta_graph(location)
        except BundleError as exc:
            print(f"  {version}  INCOMPLETE OR CORRUPT: {exc}", file=out)
            status = 1
            continue
        print(f"  {version}  signatures: {', '.join(sorted(meta_graph.signatures))}", file=out)
        if args.all or args.signature:
            print_signatures(meta_graph, out, args.signature)
            print(file=out)
    return status


def _load_inputs(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        text = pathlib.Path(text[1:]).read_text()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("--inputs must be a JSON object mapping input aliases to values")
    return value


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        # DT_STRING: text when it is UTF-8, else TF Serving REST's {"b64": ...} form.
        def convert(item: Any) -> Any:
            if isinstance(item, list):
                return [convert(i) for i in item]
            try:
                return item.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(item).decode("ascii")}

        return convert(array.tolist())
    return array.tolist()


def run_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`tessera run PATH --signature S --inputs JSON`: prints ``{"outputs": {alias: value}}``."""
    from exporter.runtime import Runtime  # the runtime pulls in every op module: only when running

    out = out or sys.stdout

    path = args.path
    if not _is_version_dir(path):
        versions = storage.list_versions(path)
        if not versions:
            raise BundleError(f"no versions under base path {path}")
        path = storage.join(path, versions[max(versions)].rsplit("/", 1)[-1])
    loaded = bundle_io.read_bundle(path, cache_dir=args.cache_dir)
    runtime = Runtime.from_bundle(loaded)
    signature = runtime.signatures.get(args.signature)
    if signature is None:
        raise BundleError(
            f"no signature {args.signature!r} in {path}; there are: {', '.join(sorted(runtime.signatures))}"
        )
    feeds = {}
    for alias, value in _load_inputs(args.inputs).items():
        info = signature.inputs.get(alias)
        # An unknown alias is passed through so the runtime names it in its error.
        feeds[alias] = dtypes.as_array(value, info.dtype) if info is not None else np.asarray(value)
    outputs = runtime.run(args.signature, feeds, output_filter=args.output_filter)
    print(json.dumps({"outputs": {k: _jsonable(v) for k, v in sorted(outputs.items())}}), file=out)
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Runs a parsed command; domain errors become a one-line message and exit status 1."""
    try:
        return args.func(args)
    except (ExporterError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m exporter.cli``) with just `inspect` and `run`."""
    parser = argparse.ArgumentParser(prog="tessera", description="Inspect and run Tessera bundles.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
