"""`tessera gateway`'s parser: the subset of `tessera serve`'s flags a gateway alone uses, plus
its own (joining a running cluster, sharing ports, the process it belongs to).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from cluster.config import ServeOptions
from cluster.errors import InvalidArgument
from cluster.flags.parsing import add_bool
from cluster.flags.tessera import TESSERA_FLAGS
from cluster.flags.tf_serving import TF_FLAGS
from cluster.gateway import config_converters

# The flags of `tessera gateway`: what a gateway alone uses (the model config, the replicas and
# autoscaling belong to the controller, which `tessera serve` starts).
_GATEWAY_FLAGS = (
    "port", "rest_api_port", "rest_api_timeout_in_ms", "monitoring_config_file", "ssl_config_file",
    "grpc_socket_path", "grpc_channel_arguments", "host", "data_plane_max_frame_bytes", "log_format", "max_request_fill_bytes",
    "gateway_retained_heap_bytes", "gateway_prefaulted_heap_bytes", "rest_max_connection_age_ms",
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
    for name, kind, default, metavar, help_text in (*TF_FLAGS, *TESSERA_FLAGS):
        if name in _GATEWAY_FLAGS:
            shown = "" if default in (None, "") else f" (default: {default})"
            group.add_argument(f"--{name}", type=kind, default=default, metavar=metavar, help=help_text + shown)
    add_bool(group, "enable_serialization_as_tensor_content", False, "send Predict outputs as tensor_content")
    add_bool(group, "reuse_port", False,
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
    for flag in ("gateway_retained_heap_bytes", "gateway_prefaulted_heap_bytes", "rest_max_connection_age_ms"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must not be negative")
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
        gateway_retained_heap_bytes=args.gateway_retained_heap_bytes,
        rest_max_connection_age_ms=args.rest_max_connection_age_ms,
        gateway_prefaulted_heap_bytes=args.gateway_prefaulted_heap_bytes,
    )
    return GatewayArgs(options, args.reuse_port, args.gateway_id, args.exit_with_parent)
