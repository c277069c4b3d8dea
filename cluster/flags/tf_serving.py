"""TF Serving's own `tensorflow_model_server` flags that `tessera serve` takes, with TF's defaults
(spec §9): the valued ones and the booleans. The parsers are in `serve.py` and `gateway.py`.
"""

from __future__ import annotations

from cluster.flags.parsing import ValuedFlag, channel_arguments

TF_FLAGS: tuple[ValuedFlag, ...] = (
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
    ("grpc_channel_arguments", channel_arguments, "", "K=V,...",
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
TF_BOOLS: tuple[tuple[str, bool, str], ...] = (
    ("enable_batching", False, "batch requests on the replicas"),
    ("enable_model_warmup", True, "replay assets.extra/tf_serving_warmup_requests at load"),
    ("enable_serialization_as_tensor_content", False, "send Predict outputs as tensor_content"),
    ("enable_grpc_healthcheck_service", False, "accepted for compatibility: health checking is always on"),
)
