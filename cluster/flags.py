"""`tessera serve` flags: TF Serving's `tensorflow_model_server` flags and defaults, plus ours.

    options, config = parse_serve_args(["--model_name=iris", "--model_base_path=/models/iris"])

Flags take TF's `--flag=value` form or `--flag value`; booleans accept `--flag`, `--noflag`
and `--flag=true|false|1|0`. Unknown or contradictory flags, and config files that do not parse,
end the process through argparse: a message on stderr and exit status 2.

Differences from TF Serving: `--port=0` binds any free port (TF disables TCP gRPC; we have no
UNIX socket listener), and relative local base paths are made absolute against the working
directory (TF refuses them), because replicas may run in another directory or on another node.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cluster.config import (
    DEFAULT_MAX_REQUEST_FILL_BYTES,
    BatchingConfig,
    ModelConfig,
    ServeOptions,
    ServerConfig,
)
from cluster.errors import InvalidArgument
from cluster.gateway import autoscaling_config, channel_args, config_converters
from exporter import servable

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/1/0, got {text!r}")


def _add_bool(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: bool, help_text: str) -> None:
    parser.add_argument(
        f"--{name}",
        type=_bool,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{help_text} (default: {str(default).lower()})",
    )
    # absl's negated form, e.g. --noenable_model_warmup.
    parser.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def host_cpus() -> int:
    """The cores this process may run on (its affinity mask, as a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_gateway_processes(cpus: int) -> int:
    """`--gateway_processes=auto` on a host with `cpus` cores: one gateway process per two cores,
    at least one, at most 8.

    A gateway process at full load keeps about one core busy and the replicas and Ray need the
    rest (benchmarks/README.md, "Gateway processes", has the measurements behind the choice).
    """
    return max(1, min(8, cpus // 2))


def _gateway_processes(text: str) -> int:
    if text.strip().lower() == "auto":
        return auto_gateway_processes(host_cpus())
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a count, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be auto or at least 0, got {count}")
    return count


def _channel_arguments(text: str) -> channel_args.ChannelArguments:
    try:
        return channel_args.parse_grpc_channel_arguments(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# (flag, type, default, metavar, help) of the valued flags; TF's defaults (spec §9), then ours.
_TF_FLAGS: tuple[tuple[str, Callable[[str], object], object, str, str], ...] = (
    ("port", int, 8500, "PORT", "gRPC port; 0 picks a free port"),
    ("rest_api_port", int, 0, "PORT", "REST port; 0 disables REST"),
    ("rest_api_timeout_in_ms", int, 30000, "MS", "REST request timeout"),
    ("model_name", str, "default", "NAME", "single-model mode: the model name"),
    ("model_base_path", str, "", "PATH", "single-model mode: the base path (local path or URI)"),
    (
        "model_platform",
        str,
        "tensorflow",
        "PLATFORM",
        "single-model mode: how versions are stored: tensorflow (Tessera bundles) or onnx "
        "(Triton's <version>/model.onnx)",
    ),
    ("model_config_file", str, "", "PATH", "text-format ModelServerConfig (instead of a base path)"),
    ("model_config_file_poll_wait_seconds", int, 0, "S", "re-read --model_config_file this often; 0: once"),
    ("file_system_poll_wait_seconds", float, 1.0, "S", "poll base paths this often; 0: once, <0: never"),
    ("batching_parameters_file", str, "", "PATH", "text-format BatchingParameters (needs --enable_batching)"),
    ("monitoring_config_file", str, "", "PATH", "text-format MonitoringConfig (Prometheus)"),
    ("max_num_load_retries", int, 5, "N", "retries after a failed load"),
    ("ssl_config_file", str, "", "PATH", "text-format SSLConfig: serve gRPC over TLS"),
    ("grpc_socket_path", str, "", "PATH", "also serve gRPC on this UNIX socket"),
    ("grpc_channel_arguments", _channel_arguments, "", "K=V,...",
     "extra gRPC server arguments, e.g. grpc.max_connection_age_ms=30000 (ints passed as ints)"),
    ("load_retry_interval_micros", int, 60_000_000, "US", "wait between load retries"),
    (
        "tensorflow_intra_op_parallelism",
        int,
        0,
        "N",
        "threads inside one op of a session (onnxruntime's intra-op threads); 0: the replica's CPUs",
    ),
    ("tensorflow_inter_op_parallelism", int, 0, "N", "ops of one session run at once; 0: one at a time"),
)
_TF_BOOLS: tuple[tuple[str, bool, str], ...] = (
    ("enable_batching", False, "batch requests on the replicas"),
    ("enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests at load"),
    ("enable_serialization_as_tensor_content", False, "send Predict outputs as tensor_content"),
    ("enable_grpc_healthcheck_service", False, "accepted for compatibility: health checking is always on"),
)
_OUR_FLAGS: tuple[tuple[str, Callable[[str], object], object, str, str], ...] = (
    ("host", str, "0.0.0.0", "HOST", "address to bind"),
    (
        "ray_address",
        str,
        None,
        "ADDRESS",
        "Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)",
    ),
    ("num_replicas", int, 1, "N", "replicas per model (the minimum, with autoscaling)"),
    ("max_replicas", int, None, "N", "autoscale each model up to this many replicas (default: no autoscaling)"),
    ("target_ongoing_requests", float, 8.0, "N", "autoscaling target: requests in flight per replica"),
    ("upscale_delay_s", float, 3.0, "S", "autoscaling: least time between a change and a scale-up"),
    ("downscale_delay_s", float, 30.0, "S", "autoscaling: how long the load must stay low before a scale-down"),
    ("scale_to_zero_idle_s", float, 300.0, "S",
     "a model with min_replicas 0 (--autoscaling_config_file) is unloaded after this long with no request"),
    (
        "autoscaling_config_file",
        str,
        "",
        "PATH",
        "text-format tessera.AutoscalingConfig: per-model min/max replicas and targets (the flags are the defaults)",
    ),
    # A Ray CPU reservation is a scheduling token, not a cap; small models sit idle most of the
    # time, so 0.02 (50 replicas per CPU) fits 50 models on a 2-CPU laptop. Raise it for big models.
    ("replica_num_cpus", float, 0.02, "CPUS", "CPUs reserved per replica host (a reservation, not a limit)"),
    # A replica host is one process holding slots of many models (one per model at most): 100
    # iris-sized models cost a host ~100 MB, so 1,000 of them fit in 10 hosts on a laptop.
    ("max_models_per_host", int, 100, "N", "models one replica host process holds at most"),
    ("replica_memory_budget_bytes", int, 0, "BYTES",
     "resident bytes of servables per replica host; past it, least recently used slots of models "
     "above their minimum replicas are evicted (0: no budget)"),
    ("max_replica_hosts", int, 0, "N", "replica host processes at most (0: as many as Ray can place)"),
    ("data_plane_max_frame_bytes", int, 1 << 30, "BYTES",
     "largest gateway-replica data-plane frame; a larger one is refused before it is read"),
    ("log_format", str, "text", "FORMAT", "text, or json for one JSON object per line"),
    (
        "gateway_processes",
        _gateway_processes,
        "auto",
        "N",
        "gateway processes on this host, all on the same ports (SO_REUSEPORT); auto: one per two cores; "
        "0: none here, only the controller (gateways join with `tessera gateway`)",
    ),
    (
        "max_request_fill_bytes",
        int,
        DEFAULT_MAX_REQUEST_FILL_BYTES,
        "BYTES",
        "bytes TF's fill (a tensor with fewer values than its shape repeats the last) may add to one Predict",
    ),
)


def build_parser(prog: str = "tessera serve") -> argparse.ArgumentParser:
    """The argument parser of `tessera serve` (no prefix abbreviations, as absl flags)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Serve TF Serving-style model bundles on Ray, over TF Serving's gRPC and REST APIs.",
    )
    for title, flags, bools in (
        ("TensorFlow Serving flags", _TF_FLAGS, _TF_BOOLS),
        ("Tessera flags", _OUR_FLAGS, ()),
    ):
        group = parser.add_argument_group(title)
        for name, kind, default, metavar, help_text in flags:
            shown = "" if default in (None, "") else f" (default: {default})"
            group.add_argument(
                f"--{name}", type=kind, default=default, metavar=metavar, help=help_text + shown
            )
        for name, default, help_text in bools:
            _add_bool(group, name, default, help_text)
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


# The flags of `tessera gateway`: what a gateway alone uses (the model config, the replicas and
# autoscaling belong to the controller, which `tessera serve` starts).
_GATEWAY_FLAGS = (
    "port", "rest_api_port", "rest_api_timeout_in_ms", "monitoring_config_file", "ssl_config_file",
    "grpc_socket_path", "grpc_channel_arguments", "host", "data_plane_max_frame_bytes", "log_format", "max_request_fill_bytes",
)


@dataclass(frozen=True)
class GatewayArgs:
    options: ServeOptions
    reuse_port: bool
    gateway_id: str  # "" picks one
    exit_with_parent: int | None  # a gateway process of `tessera serve`: that server's pid


def build_gateway_parser(prog: str = "tessera gateway") -> argparse.ArgumentParser:
    """The argument parser of `tessera gateway` (a subset of `tessera serve`'s flags, plus its own)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Serve TF Serving's gRPC and REST APIs for a Tessera cluster that is already running: "
        "joins the controller that `tessera serve` started on the Ray cluster at --ray_address.",
    )
    group = parser.add_argument_group("Gateway flags")
    group.add_argument("--ray_address", required=True, metavar="ADDRESS",
                       help="the Ray cluster to join, e.g. auto, head:6379 or ray://head:10001")
    for name, kind, default, metavar, help_text in (*_TF_FLAGS, *_OUR_FLAGS):
        if name in _GATEWAY_FLAGS:
            shown = "" if default in (None, "") else f" (default: {default})"
            group.add_argument(f"--{name}", type=kind, default=default, metavar=metavar, help=help_text + shown)
    _add_bool(group, "enable_serialization_as_tensor_content", False, "send Predict outputs as tensor_content")
    _add_bool(group, "reuse_port", False,
              "bind with SO_REUSEPORT, so several gateways on this host share the ports")
    group.add_argument("--controller_wait_seconds", type=float, default=600.0, metavar="S",
                       help="wait this long for the cluster's controller to appear (default: 600)")
    group.add_argument("--gateway_id", default="", help=argparse.SUPPRESS)
    group.add_argument("--exit_with_parent", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_gateway_args(argv: Sequence[str] | None = None, *, prog: str = "tessera gateway") -> GatewayArgs:
    """Parses `tessera gateway` flags (exit status 2 and a message for bad ones)."""
    parser = build_gateway_parser(prog)
    args = parser.parse_args(argv)
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            parser.error(f"--{flag} must be in 0..65535, got {getattr(args, flag)}")
    if args.rest_api_port and args.rest_api_port == args.port:
        parser.error(f"--rest_api_port must differ from --port (both are {args.port})")
    if args.log_format not in ("text", "json"):
        parser.error(f"--log_format must be text or json, got {args.log_format!r}")
    if args.data_plane_max_frame_bytes < 1 << 16:
        parser.error(f"--data_plane_max_frame_bytes must be at least {1 << 16}")
    if args.rest_api_timeout_in_ms < 1:
        parser.error("--rest_api_timeout_in_ms must be at least 1")
    try:
        if args.ssl_config_file:
            config_converters.ssl_credentials_from_text(config_converters.read_text_file(args.ssl_config_file))
        monitoring_path = None
        if args.monitoring_config_file:
            monitoring_path = config_converters.monitoring_path_from_text(
                config_converters.read_text_file(args.monitoring_config_file))
    except InvalidArgument as exc:
        parser.error(str(exc))
    options = ServeOptions(
        host=args.host, grpc_port=args.port, rest_port=args.rest_api_port, ray_address=args.ray_address,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms, monitoring_path=monitoring_path,
        monitoring_config_file=args.monitoring_config_file, ssl_config_file=args.ssl_config_file,
        grpc_socket_path=args.grpc_socket_path, serialize_as_tensor_content=args.enable_serialization_as_tensor_content,
        log_format=args.log_format, max_request_fill_bytes=args.max_request_fill_bytes,
        data_plane_max_frame_bytes=args.data_plane_max_frame_bytes,
        controller_wait_seconds=args.controller_wait_seconds, grpc_channel_arguments=args.grpc_channel_arguments,
    )
    return GatewayArgs(options, args.reuse_port, args.gateway_id, args.exit_with_parent)
