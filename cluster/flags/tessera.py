"""Tessera's own flags of `tessera serve`, beyond TF Serving's (`tf_serving.py`): the Ray cluster,
replicas and their hosts, autoscaling, the gateway processes, logging and limits.
"""

from __future__ import annotations

from cluster.config import DEFAULT_GATEWAY_RETAINED_HEAP_BYTES, DEFAULT_MAX_REQUEST_FILL_BYTES
from cluster.flags.parsing import ValuedFlag, gateway_processes

TESSERA_FLAGS: tuple[ValuedFlag, ...] = (
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
    ("gateway_retained_heap_bytes", int, DEFAULT_GATEWAY_RETAINED_HEAP_BYTES, "BYTES",
     "freed memory a gateway process keeps mapped for the next big message (glibc malloc), so its "
     "copies reuse pages instead of faulting in fresh ones (the embedded Ray's replica hosts get the "
     "same); 0: the C library's default thresholds (the gateway's threads still share one arena)"),
    ("gateway_prefaulted_heap_bytes", int, 0, "BYTES",
     "heap a gateway process faults in once Ray has started (at most --gateway_retained_heap_bytes), "
     "so that its first big messages find their pages ready; resident from the start (0: none)"),
    (
        "gateway_processes",
        gateway_processes,
        "auto",
        "N",
        "gateway processes on this host, all on the same ports (SO_REUSEPORT); auto: one per two cores; "
        "0: none here, only the controller (gateways join with `tessera gateway`)",
    ),
    # Off by default, as TF Serving's REST server and gRPC (no grpc.max_connection_age_ms) are:
    # with one gateway behind a port an age buys nothing and costs a reconnection per client per
    # age. Turn it on where several gateways share clients: --gateway_processes > 1, or pods
    # behind a Service (k8s/base/gateway.yaml sets 30 s, as its gRPC age).
    ("rest_max_connection_age_ms", int, 0, "MS",
     "REST (HTTP/1.1 keep-alive) connections older than this (+-10 %% jitter, as gRPC's "
     "max_connection_age) get `Connection: close` on their next response and close after it, so "
     "keep-alive clients reconnect and may reach another gateway process or pod (never mid-request); "
     "the REST side of --grpc_channel_arguments=grpc.max_connection_age_ms. 0: never, as TF Serving"),
    (
        "max_request_fill_bytes",
        int,
        DEFAULT_MAX_REQUEST_FILL_BYTES,
        "BYTES",
        "bytes TF's fill (a tensor with fewer values than its shape repeats the last) may add to one Predict",
    ),
)
