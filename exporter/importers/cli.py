"""`tessera export-onnx`: wrap an ONNX file in a bundle version, with a receiver and the heads named.

    tessera export-onnx model.onnx /models/mlp [--classify probs --class-labels a,b,c | --regress y]
                        [--feature-names f0,f1,...] [--input-key x] [--keep N]

prints the version directory it published; `tessera inspect` shows its signatures.
"""

from __future__ import annotations

import argparse
import sys


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `export-onnx` on a parser's subparsers (exporter.cli registers it beside `inspect`)."""
    cmd = subparsers.add_parser(
        "export-onnx", help="wrap an ONNX file in a bundle version with a receiver and heads",
        description="Publishes MODEL (an .onnx file) as a new version under BASE_PATH: Predict over "
        "its ONNX inputs and outputs, plus a Classify or Regress head over tf.Examples if named.",
    )  # fmt: skip
    cmd.add_argument("model", help="the .onnx file (no external data)")
    cmd.add_argument("base_path", help="base path or URI to publish <version>/ under")
    head = cmd.add_mutually_exclusive_group()
    head.add_argument("--classify", metavar="OUTPUT", help="the output holding class scores [batch, k]")
    head.add_argument("--regress", metavar="OUTPUT", help="the output holding the prediction [batch(, 1)]")
    cmd.add_argument("--class-labels", help="comma-separated class labels (default 0..k-1)")
    cmd.add_argument("--feature-names", help="comma-separated tf.Example features, one per column of "
                     "a single [batch, n] input")  # fmt: skip
    cmd.add_argument("--input-key", help="the raw receiver's name for that matrix (default: its ONNX name)")
    cmd.add_argument("--keep", type=int, help="keep only the newest N versions")
    cmd.set_defaults(func=export_onnx_command)


def export_onnx_command(args: argparse.Namespace) -> int:
    from exporter.export import export_model  # the graph and runtime: only when exporting
    from exporter.importers.onnx import import_onnx

    model = import_onnx(
        args.model, feature_names=_names(args.feature_names), input_key=args.input_key,
        classify=args.classify, class_labels=_names(args.class_labels), regress=args.regress,
    )  # fmt: skip
    path = export_model(args.base_path, model.model_fn, None, signatures=model.signatures(), keep=args.keep)
    print(path, file=sys.stdout)
    return 0
