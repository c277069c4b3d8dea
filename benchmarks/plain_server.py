"""(a) The ceiling for a Python front end: one process, one grpc.aio server, one servable run per request.

No batching, no Ray, no validation beyond the runtime's own: decode the TensorProto, run the model
on the event loop (it takes ~30 us for batch 1; a thread hop would cost more), encode the outputs.
The model loads through the same loader registry as Tessera's replicas: a bundle into the numpy
runtime, or (`--model_platform=onnx`) `model.onnx` into one onnxruntime session with one intra-op
thread, as a replica of 0.5 CPU has.

    python -m benchmarks.plain_server --port 8600 --model_dir /tmp/bench_models/bench/1
    python -m benchmarks.plain_server --port 8600 --model_dir /tmp/bench_models/bench_onnx/1 --model_platform=onnx
    python -m benchmarks.plain_server --port 8600 --model_dir /tmp/bench_models/bench/1 --echo   # gRPC's floor
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from benchmarks.wire import decode_inputs, encode_response
from exporter.errors import InvalidInputError
from exporter.servable import LoadOptions, Servable, load_servable
from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


class PlainPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService/Predict only, over one servable."""

    def __init__(self, runtime: Servable) -> None:
        self._runtime = runtime

    async def Predict(  # noqa: N802 - the rpc's name
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        try:
            outputs = self._runtime.run(
                request.model_spec.signature_name or "serving_default",
                decode_inputs(request),
                list(request.output_filter) or None,
            )
        except InvalidInputError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return encode_response(request, outputs)


def echo_handlers(runtime: Servable) -> grpc.GenericRpcHandler:
    """`--echo`: the floor of a grpc.aio server. Predict's raw bytes in, raw bytes out, each distinct
    request answered by the model once and from a cache after that: what is left per request is
    gRPC's and asyncio's own cost (no parse, no model, no serialization)."""
    cache: dict[bytes, bytes] = {}

    async def predict(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        answer = cache.get(raw)
        if answer is None:
            request = predict_pb2.PredictRequest.FromString(raw)
            outputs = runtime.run(request.model_spec.signature_name or "serving_default", decode_inputs(request), None)
            answer = cache[raw] = encode_response(request, outputs).SerializeToString()
        return answer

    handler = grpc.unary_unary_rpc_method_handler(predict)  # no (de)serializers: bytes both ways
    return grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": handler})


async def serve(
    port: int, model_dir: str, host: str = "127.0.0.1", platform: str = "tensorflow", echo: bool = False
) -> None:
    """Serves until SIGTERM/SIGINT, then stops with a short grace."""
    runtime = load_servable(platform, model_dir, LoadOptions(intra_op_threads=1))
    server = grpc.aio.server()
    if echo:
        server.add_generic_rpc_handlers((echo_handlers(runtime),))
    else:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PlainPredictionService(runtime), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"plain server on {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_dir", required=True, help="one published version, e.g. <base>/1")
    parser.add_argument("--model_platform", default="tensorflow", help="tensorflow (a bundle) or onnx")
    parser.add_argument("--echo", action="store_true", help="answer from a cache: gRPC's own cost per request")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model_dir, platform=args.model_platform, echo=args.echo))


if __name__ == "__main__":
    main()
