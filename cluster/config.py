"""Server configuration as plain data: what models to serve, how, and with which batching.

A leaf module (stdlib only). The text-format protos (ModelServerConfig, BatchingParameters) are
converted into these classes by the gateway's config converters; everything else reads these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PolicyKind = Literal["latest", "all", "specific"]


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions on disk are aspired: the N latest, all, or a specific set."""

    kind: PolicyKind = "latest"
    num_versions: int = 1  # for "latest"; 0 is treated as 1, as in TF Serving
    versions: tuple[int, ...] = ()  # for "specific"


@dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters, with the scheduler's defaults for unset fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = None
    pad_variable_length_inputs: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """One servable stream: a name, a base path (local or pyarrow.fs URI) and how to serve it."""

    name: str
    base_path: str
    platform: str = "tensorflow"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: tuple[tuple[str, int], ...] = ()  # sorted (label, version) pairs
    num_replicas: int | None = None  # None: the server's --num_replicas
    batching: BatchingConfig | None = None  # None: the server's batching settings

    def label_map(self) -> dict[str, int]:
        return dict(self.version_labels)


@dataclass(frozen=True)
class ModelAutoscaling:
    """One model's entry in `--autoscaling_config_file`: None leaves the flag's value."""

    min_replicas: int | None = None  # default: --num_replicas; 0: scale to zero when idle
    max_replicas: int | None = None  # default: --max_replicas (and never below min_replicas)
    target_ongoing_requests: float | None = None  # default: --target_ongoing_requests
    upscale_delay_s: float | None = None  # default: --upscale_delay_s
    downscale_delay_s: float | None = None  # default: --downscale_delay_s
    scale_to_zero_idle_s: float | None = None  # default: --scale_to_zero_idle_s
    own_hosts: bool = False  # replicas on hosts of its own, not slots on shared ones


@dataclass(frozen=True)
class ServerConfig:
    """The whole desired state of the models: replaces the previous one on reload."""

    models: tuple[ModelConfig, ...] = ()

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


# `tessera serve --max_request_fill_bytes`: room for any fill a client means (a [4096, 4096] float
# tensor of zeros), far from the 2 GB a 39-byte message could otherwise claim.
DEFAULT_MAX_REQUEST_FILL_BYTES = 64 * 1024 * 1024
# Freed heap a gateway process keeps for the next big message (`cluster.heap`).
DEFAULT_GATEWAY_RETAINED_HEAP_BYTES = 1 << 30


@dataclass(frozen=True)
class ServeOptions:
    """Process-level settings from `tessera serve` flags."""

    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int = 0
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: float = 1.0
    enable_batching: bool = False
    batching: BatchingConfig | None = None
    enable_model_warmup: bool = True
    num_replicas: int = 1
    # A reservation, not a cap: Ray never limits a replica's CPU use. 0.02 places 50 replicas per
    # CPU (50 small models on a 2-CPU laptop) and still shows a cluster autoscaler the demand.
    replica_num_cpus: float = 0.02  # per replica host
    # Replica hosts (each a process holding slots of many models): how many models one may hold,
    # the bytes its servables may keep resident (0: no budget; least recently used slots of
    # models above their minimum are evicted past it), and how many may run (0: as Ray places).
    max_models_per_host: int = 100
    replica_memory_budget_bytes: int = 0
    max_replica_hosts: int = 0
    ray_address: str | None = None
    rest_api_timeout_in_ms: int = 30000
    # TF's --rest_api_enable_cors_support: CORS headers on REST replies, OPTIONS preflight allowed.
    rest_api_enable_cors_support: bool = False
    # REST keep-alive connections older than this (+-10 %) close after their next response, so
    # clients reconnect and may reach another gateway (cluster.gateway.connection_age); 0: never.
    rest_max_connection_age_ms: int = 0
    monitoring_path: str | None = None
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    # TF's --enable_serialization_as_tensor_content: Predict outputs as raw tensor_content bytes.
    serialize_as_tensor_content: bool = False
    log_format: str = "text"  # or "json": one JSON object per line
    ssl_config_file: str = ""  # TF's SSLConfig text: TLS on the gRPC port
    grpc_socket_path: str = ""  # also serve gRPC on this UNIX socket
    # TF's --grpc_channel_arguments: extra (key, value) arguments of the gateways' gRPC servers.
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    # Autoscaling between num_replicas and max_replicas (None: fixed at num_replicas).
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    scale_to_zero_idle_s: float = 300.0  # a model with min_replicas 0 goes to 0 after this long idle
    # TF's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism, applied to each
    # onnxruntime session (0: intra-op from the replica's CPUs, inter-op sequential).
    session_threads: tuple[int, int] = (0, 0)
    # What TF's fill (fewer values than the shape: the last one repeats) may add to one request's
    # tensors, in bytes: a 39-byte Predict could otherwise claim 2 GB.
    max_request_fill_bytes: int = DEFAULT_MAX_REQUEST_FILL_BYTES
    data_plane_max_frame_bytes: int = 1 << 30  # a larger gateway<->replica frame is refused unread
    autoscaling_config_file: str = ""
    monitoring_config_file: str = ""  # the file monitoring_path came from (for more gateway processes)
    # Gateways of `tessera serve`: this process runs one, the others are subprocesses on the same
    # ports (SO_REUSEPORT); 0: none, a controller-only process (gateways join with `tessera gateway`).
    gateway_processes: int = 1
    controller_wait_seconds: float = 600.0  # `tessera gateway`: how long to wait for the controller
    # Freed heap a gateway process keeps mapped for the next big message (`cluster.heap`).
    gateway_retained_heap_bytes: int = DEFAULT_GATEWAY_RETAINED_HEAP_BYTES
    # Heap a gateway process faults in at start for its first big messages (`cluster.heap.prefault`).
    gateway_prefaulted_heap_bytes: int = 0
    # Per-model overrides of the autoscaling flags above, from --autoscaling_config_file.
    model_autoscaling: dict[str, ModelAutoscaling] = field(default_factory=dict)
