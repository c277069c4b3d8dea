"""A steady stream of Predict calls from client threads, counting what a client sees.

Shared by the fault scenarios (`scenarios_faults.py`) and the integration fault tests, so both
measure the same thing: requests sent, failed (with their codes), the worst latency.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from cluster.client.tensors import make_tensor_proto
from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


@dataclass
class Stream:
    """`clients` threads, each calling Predict on `models` in turn until stopped.

    `timeout_s` is the client deadline (None: no deadline, as many clients send). The model is the
    integration tests' one: input x float32 [-1, 2].
    """

    target: str
    models: Sequence[str] = ("m",)
    clients: int = 4
    timeout_s: float | None = 30.0
    sent: int = 0
    failed: int = 0
    worst_s: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # a failure code -> its first details
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Stream:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._threads.clear()

    def _run(self, index: int) -> None:
        tensor = make_tensor_proto(np.ones((1, 2), np.float32))
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            turn = index
            while not self._stop.is_set():
                request = predict_pb2.PredictRequest()
                request.model_spec.name = self.models[turn % len(self.models)]
                request.inputs["x"].CopyFrom(tensor)
                turn += 1
                started = time.monotonic()
                code, details = "OK", ""
                try:
                    stub.Predict(request, timeout=self.timeout_s)
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                elapsed = time.monotonic() - started
                with self._lock:
                    self.sent += 1
                    self.failed += code != "OK"
                    self.worst_s = max(self.worst_s, elapsed)
                    self.codes[code] += 1
                    if code != "OK":
                        self.messages.setdefault(code, details)  # the first of each code: where it came from

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.sent, self.failed

    def summary(self) -> str:
        return f"sent {self.sent}, failed {self.failed} {dict(self.codes)}, worst {self.worst_s * 1000:.0f} ms"
