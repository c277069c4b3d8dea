"""`tessera serve`'s parser: TF Serving's flags and ours, their cross-checks, and the options
and model config they make.

    options, config = parse_serve_args(["--model_name=iris", "--model_base_path=/models/iris"])
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cluster.config import BatchingConfig, ModelConfig, ServeOptions, ServerConfig
from cluster.errors import InvalidArgument
from cluster.flags.parsing import add_bool
from cluster.flags.tessera import TESSERA_FLAGS
from cluster.flags.tf_serving import TF_BOOLS, TF_FLAGS
from cluster.gateway import autoscaling_config, config_converters
from exporter import servable


def build_parser(prog: str = "tessera serve") -> argparse.ArgumentParser:
    """The argument parser of `tessera serve` (no prefix abbreviations, as absl flags)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Serve TF Serving-style model bundles on Ray, over TF Serving's gRPC and REST APIs.",
    )
    for title, flags, bools in (
        ("TensorFlow Serving flags", TF_FLAGS, TF_BOOLS),
        ("Tessera flags", TESSERA_FLAGS, ()),
    ):
        group = parser.add_argument_group(title)
        for name, kind, default, metavar, help_text in flags:
            shown = "" if default in (None, "") else f" (default: {default})"
            group.add_argument(
                f"--{name}", type=kind, default=default, metavar=metavar, help=help_text + shown
            )
        for name, default, help_text in bools:
            add_bool(group, name, default, help_text)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The contradictions and out-of-range values argparse cannot see by itself."""
    if bool(args.model_base_path) == bool(args.model_config_file):
        parser.error("give exactly one of --model_base_path (single model) or --model_config_file")
    if args.model_base_path and not args.model_name:
        parser.error("--model_name must not be empty")
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file is set without setting --enable_batching to true")
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            parser.error(f"--{flag} must be in 0..65535, got {getattr(args, flag)}")
    if args.max_replicas is not None and args.max_replicas < args.num_replicas:
        parser.error(f"--max_replicas ({args.max_replicas}) must be at least --num_replicas ({args.num_replicas})")
    if args.target_ongoing_requests <= 0:
        parser.error("--target_ongoing_requests must be positive")
    if args.model_platform not in servable.platforms():
        parser.error(f"--model_platform must be one of {', '.join(servable.platforms())}, got {args.model_platform!r}")
    if args.model_platform != "tensorflow" and args.model_config_file:
        parser.error("--model_platform applies to --model_base_path; set model_platform in the model config instead")
    for flag in ("upscale_delay_s", "downscale_delay_s", "scale_to_zero_idle_s"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must not be negative, got {getattr(args, flag)}")
    if args.log_format not in ("text", "json"):
        parser.error(f"--log_format must be text or json, got {args.log_format!r}")
    if args.rest_api_port and args.rest_api_port == args.port:
        parser.error(f"--rest_api_port must differ from --port (both are {args.port})")
    minimums = {
        "num_replicas": 1,
        "replica_num_cpus": 0,
        "max_models_per_host": 1,
        "replica_memory_budget_bytes": 0,
        "max_replica_hosts": 0,
        "data_plane_max_frame_bytes": 1 << 16,
        "rest_api_timeout_in_ms": 1,
        "max_num_load_retries": 0,
        "load_retry_interval_micros": 0,
        "model_config_file_poll_wait_seconds": 0,
        "tensorflow_intra_op_parallelism": 0,
        "tensorflow_inter_op_parallelism": 0,
        "max_request_fill_bytes": 0,
        "gateway_retained_heap_bytes": 0,
        "rest_max_connection_age_ms": 0,
        "gateway_prefaulted_heap_bytes": 0,
    }
    for flag, minimum in minimums.items():
        if getattr(args, flag) < minimum:
            parser.error(f"--{flag} must be at least {minimum}, got {getattr(args, flag)}")


def _server_config(args: argparse.Namespace) -> ServerConfig:
    if args.model_config_file:
        return config_converters.load_server_config(args.model_config_file)
    # TF's single-model mode: one `config { name, base_path, model_platform }`.
    base_path = config_converters.absolute_base_path(args.model_base_path)
    return ServerConfig((ModelConfig(name=args.model_name, base_path=base_path, platform=args.model_platform),))


def _options(args: argparse.Namespace) -> ServeOptions:
    batching: BatchingConfig | None = None
    if args.enable_batching:
        batching = (
            config_converters.batching_from_text(
                config_converters.read_text_file(args.batching_parameters_file)
            )
            if args.batching_parameters_file
            else BatchingConfig()
        )
    if args.ssl_config_file:  # fail at start with a usage error, not later with a traceback
        config_converters.ssl_credentials_from_text(config_converters.read_text_file(args.ssl_config_file))
    monitoring_path = None
    if args.monitoring_config_file:
        text = config_converters.read_text_file(args.monitoring_config_file)
        monitoring_path = config_converters.monitoring_path_from_text(text)
    return ServeOptions(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        enable_batching=args.enable_batching,
        batching=batching,
        enable_model_warmup=args.enable_model_warmup,
        num_replicas=args.num_replicas,
        replica_num_cpus=args.replica_num_cpus,
        max_models_per_host=args.max_models_per_host,
        replica_memory_budget_bytes=args.replica_memory_budget_bytes,
        max_replica_hosts=args.max_replica_hosts,
        data_plane_max_frame_bytes=args.data_plane_max_frame_bytes,
        ray_address=args.ray_address,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        monitoring_path=monitoring_path,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_seconds=args.load_retry_interval_micros / 1e6,
        serialize_as_tensor_content=args.enable_serialization_as_tensor_content,
        log_format=args.log_format,
        ssl_config_file=args.ssl_config_file,
        grpc_socket_path=args.grpc_socket_path,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        scale_to_zero_idle_s=args.scale_to_zero_idle_s,
        session_threads=(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism),
        max_request_fill_bytes=args.max_request_fill_bytes,
        autoscaling_config_file=args.autoscaling_config_file,
        monitoring_config_file=args.monitoring_config_file,
        gateway_processes=args.gateway_processes,
        grpc_channel_arguments=args.grpc_channel_arguments,
        gateway_retained_heap_bytes=args.gateway_retained_heap_bytes,
        rest_max_connection_age_ms=args.rest_max_connection_age_ms,
        gateway_prefaulted_heap_bytes=args.gateway_prefaulted_heap_bytes,
        model_autoscaling=(
            autoscaling_config.autoscaling_from_text(config_converters.read_text_file(args.autoscaling_config_file))
            if args.autoscaling_config_file
            else {}
        ),
    )


def parse_serve_args(
    argv: Sequence[str] | None = None, *, prog: str = "tessera serve"
) -> tuple[ServeOptions, ServerConfig]:
    """Parses `tessera serve` flags and reads the config files they name.

    In single-model mode the ServerConfig holds one model (`--model_name`, `--model_base_path`).
    Exits with status 2 and a message on stderr for unknown or contradictory flags and for
    config files that cannot be read or do not validate.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        return _options(args), _server_config(args)
    except InvalidArgument as exc:
        parser.error(str(exc))
