"""`tessera inspect` and `tessera run`: look at a model's versions and run a signature locally.

Both take a base path (``<base>/<version>/...``) or one version directory, as a local path or a
pyarrow.fs URI, and go through the loader registry (`exporter.servable`) as the server does, by
`--model_platform` or, by default, the platform the directory's files call for (MANIFEST.pb: a
Tessera bundle; model.onnx: ONNX). `inspect` of a bundle reads only MANIFEST.pb and graph.pb
(nothing is copied); `run` loads the whole version (remote ones through the local cache).
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from exporter import dtypes, servable, storage
from exporter.errors import BundleError, ExporterError
from exporter.loaders import formats
from exporter.signature import DEFAULT_SERVING_SIGNATURE, Shape, Signature, check_feeds
from protos.tessera import bundle_pb2


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `inspect` and `run` on a parser's subparsers (used by `cluster.cli`)."""
    from exporter.importers import cli as importers_cli  # `export-onnx` lives with the importers

    importers_cli.add_commands(subparsers)
    inspect = subparsers.add_parser(
        "inspect", help="show the versions of a model, or the signatures of a version",
        description="With a base path: list its versions (--all: and every signature of each). "
        "With one version directory: every signature, its method and inputs/outputs.",
    )
    inspect.add_argument("path", help="base path or version directory (local path or URI)")
    inspect.add_argument("--all", action="store_true", help="show the signatures of every version")
    inspect.add_argument("--signature", help="show only this signature")
    _add_platform(inspect)
    inspect.set_defaults(func=inspect_command)

    run = subparsers.add_parser(
        "run", help="run a signature of a bundle locally and print its outputs as JSON",
        description="PATH is a version directory, or a base path (its newest version is used).",
    )
    run.add_argument("path", help="base path or version directory (local path or URI)")
    run.add_argument("--signature", default=DEFAULT_SERVING_SIGNATURE, help="signature key (default: %(default)s)")
    run.add_argument(
        "--inputs", required=True,
        help='JSON object alias -> nested list, e.g. \'{"x": [[1, 2, 3, 4]]}\'; @FILE reads it from a file',
    )
    run.add_argument("--output-filter", action="append", help="only this output alias (repeatable)")
    run.add_argument("--cache-dir", help="local cache for remote bundles")
    _add_platform(run)
    run.set_defaults(func=run_command)

    # `tessera import`: TensorFlow SavedModels -> bundles (its own module; TensorFlow only when run).
    from exporter.importers.savedmodel_cli import add_command as add_import_command

    add_import_command(subparsers)


def _add_platform(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model_platform", "--model-platform", dest="model_platform",
        help="the model config's model_platform (tensorflow, onnx, ...); default: what the files are",
    )


def _is_version_dir(path: str) -> bool:
    """A directory holding a model file of any known format (else: a base path)."""
    return formats.found(path) is not None


def _platform(args: argparse.Namespace, version_dir: str) -> str:
    if args.model_platform:
        return str(args.model_platform)
    hit = formats.found(version_dir)
    return "onnx" if hit is not None and hit[0] == "onnx" else "tensorflow"


def _dtype_text(dtype: int) -> str:
    """TensorFlow's DT_ name of a dtype (DT_FLOAT, DT_COMPLEX64, ...)."""
    try:
        return bundle_pb2.DType.Name(dtype)
    except ValueError:
        return f"DT_{dtypes.name(dtype).upper()}"


def _shape_text(shape: Shape) -> str:
    if shape is None:
        return "unknown_rank"
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape) + ")"


def print_signatures(signatures: Mapping[str, Signature], out: TextIO, only: str | None = None) -> None:
    """Prints signatures the way `saved_model_cli show --all` does."""
    keys = sorted(signatures) if only is None else [only]
    for key in keys:
        if key not in signatures:
            raise BundleError(f"no signature {key!r}; there are: {', '.join(sorted(signatures))}")
        sig = signatures[key]
        print(f"\nsignature_def[{key!r}]:", file=out)
        for kind, infos in (("input", sig.inputs), ("output", sig.outputs)):
            print(f"  The given SignatureDef contains the following {kind}(s):", file=out)
            for alias in sorted(infos):
                info = infos[alias]
                print(f"    {kind}s[{alias!r}] tensor_info:", file=out)
                print(f"        dtype: {_dtype_text(info.dtype)}", file=out)
                print(f"        shape: {_shape_text(info.shape)}", file=out)
                print(f"        name: {info.name}", file=out)
        print(f"  Method name is: {sig.method_name}", file=out)


def inspect_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """`tessera inspect PATH [--all] [--signature S] [--model_platform P]`."""
    out = out or sys.stdout  # looked up per call, so a redirected sys.stdout is honoured
    if _is_version_dir(args.path):
        signatures = servable.describe(_platform(args, args.path), args.path)
        print(f"version directory {args.path}", file=out)
        print_signatures(signatures, out, args.signature)
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
            signatures = servable.describe(_platform(args, location), location)
        except BundleError as exc:
            print(f"  {version}  INCOMPLETE OR CORRUPT: {exc}", file=out)
            status = 1
            continue
        print(f"  {version}  signatures: {', '.join(sorted(signatures))}", file=out)
        if args.all or args.signature:
            print_signatures(signatures, out, args.signature)
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
    out = out or sys.stdout

    path = args.path
    if not _is_version_dir(path):
        versions = storage.list_versions(path)
        if not versions:
            raise BundleError(f"no versions under base path {path}")
        path = storage.join(path, versions[max(versions)].rsplit("/", 1)[-1])
    options = servable.LoadOptions(cache_dir=args.cache_dir)
    loaded = servable.load_servable(_platform(args, path), path, options)
    signature = loaded.signatures.get(args.signature)
    if signature is None:
        raise BundleError(
            f"no signature {args.signature!r} in {path}; there are: {', '.join(sorted(loaded.signatures))}"
        )
    feeds = {}
    for alias, value in _load_inputs(args.inputs).items():
        info = signature.inputs.get(alias)
        # An unknown alias is passed through so the check names it in its error.
        feeds[alias] = dtypes.as_array(value, info.dtype) if info is not None else np.asarray(value)
    try:
        check_feeds(signature, feeds)  # where `tessera run`'s request enters: the runtime trusts it
        outputs = loaded.run(args.signature, feeds, args.output_filter)
    finally:
        loaded.close()
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
    parser = argparse.ArgumentParser(prog="tessera", description="Inspect and run model versions.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
