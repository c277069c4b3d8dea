"""`tessera batch-predict` flags, parsed without starting Ray."""

from __future__ import annotations

import argparse

import pytest

from cluster.batch_predict.feeding import InputSelection
from cluster.batch_predict.predict import _selection, build_parser


def test_input_columns_name_features_or_stack_inputs() -> None:
    assert _selection(["a,b", "x:c, d", "e"]) == InputSelection(("a", "b", "e"), {"x": ("c", "d")})
    for bad in (":a", "x:", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--input_columns"):
            _selection([bad])


def test_defaults_and_the_old_format_flag() -> None:
    args = build_parser().parse_args(["--model_path=m", "--input=i", "--output=o", "--format=csv"])
    assert (args.model_platform, args.signature, args.input_format, args.output_format) == (
        "tensorflow", "serving_default", "csv", "parquet")
    assert (args.concurrency, args.num_cpus, args.batch_size, args.overwrite) == (1, None, 8192, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model_path=m", "--input=i", "--output=o", "--input_format=xls"])
