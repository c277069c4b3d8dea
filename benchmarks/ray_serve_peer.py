"""(c) The peer: Ray Serve 2.60 with `@serve.batch`, the same numpy model, over TF Serving's gRPC Predict.

One deployment, one replica (`num_cpus=0.5`), `@serve.batch(max_batch_size=32,
batch_wait_timeout_s=0.002)` and `max_ongoing_requests` >= the batch size (otherwise batches never
fill). The deployment loads the same bundle with exporter.runtime and runs the merged batch once.
Serve's gRPC proxy is given TF Serving's `add_PredictionServiceServicer_to_server`, and the
deployment method is named `Predict` like the rpc, so the load generator that drives the other
servers drives this one unchanged. Embedded local Ray: auth off (RAY_AUTH_MODE=disabled),
dashboard off, HTTP on loopback; Serve's gRPC proxy binds every interface, traffic stays on loopback.

Installed by the `bench` extra only (`pip install -e '.[bench]'`).

    python -m benchmarks.ray_serve_peer --port 9000 --model_dir /tmp/bench_models/bench/1
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

import numpy as np

from protos.tensorflow_serving.apis import predict_pb2

MAX_BATCH_SIZE = 32
BATCH_WAIT_TIMEOUT_S = 0.002
# >= MAX_BATCH_SIZE so a batch can fill; 2x so the next batch queues while one runs.
MAX_ONGOING_REQUESTS = 2 * MAX_BATCH_SIZE
SERVICER = "protos.tensorflow_serving.apis.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server"


def build_app(model_dir: str):  # -> ray.serve.Application (ray.serve is only imported when used)
    """The Serve application: one batched deployment over the bundle at `model_dir`."""
    from ray import serve

    @serve.deployment(
        name="BenchModel",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    class BenchModel:
        """Holds one Runtime; Predict runs a merged batch of Serve requests."""

        def __init__(self, path: str) -> None:
            from exporter.bundle import read_bundle
            from exporter.runtime import Runtime

            self.runtime = Runtime.from_bundle(read_bundle(path))

        @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_TIMEOUT_S)
        async def Predict(  # noqa: N802 - must equal the rpc name for Serve's gRPC proxy
            self, requests: list[predict_pb2.PredictRequest]
        ) -> list[predict_pb2.PredictResponse]:
            from benchmarks.wire import decode_inputs, encode_response

            feeds = [decode_inputs(r) for r in requests]
            sizes = [len(f["x"]) for f in feeds]
            merged = {"x": np.concatenate([f["x"] for f in feeds])}
            outputs = self.runtime.run("serving_default", merged)
            bounds = np.cumsum(sizes)[:-1]
            parts = {alias: np.split(array, bounds) for alias, array in outputs.items()}
            return [
                encode_response(r, {alias: parts[alias][i] for alias in parts}) for i, r in enumerate(requests)
            ]

    return BenchModel.bind(model_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_signal(port: int, model_dir: str, num_cpus: int) -> None:
    """Starts Ray + Serve, deploys, prints a line, and tears everything down on SIGTERM/SIGINT."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a local peer on loopback: no token auth
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    stop = threading.Event()
    ray.init(
        address="local",  # a Ray of its own, never one a `ray start` left on this machine
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
    )
    # After ray.init, which installs its own fatal-signal handlers: SIGTERM must mean "shut down
    # Serve and Ray cleanly", not "die and leave the actors to the raylet".
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": _free_port()},
            grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER]),
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        serve.run(build_app(model_dir), name="bench", route_prefix="/bench")
        print(f"ray serve gRPC on 127.0.0.1:{port}", flush=True)
        stop.wait()
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="Serve's gRPC port")
    parser.add_argument("--model_dir", required=True, help="one published version, e.g. <base>/1")
    parser.add_argument("--num_cpus", type=int, default=max(2, os.cpu_count() or 2))
    args = parser.parse_args()
    serve_until_signal(args.port, args.model_dir, args.num_cpus)


if __name__ == "__main__":
    main()
