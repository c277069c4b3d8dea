"""TF Serving's Predict on the wire: the request every load generator sends and the codec servers share."""

from __future__ import annotations

import numpy as np

from benchmarks.model import INPUT, LAYERS, MODEL_NAME, SIGNATURE
from exporter import tensor_codec, tensor_encode
from protos.tensorflow_serving.apis import predict_pb2

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def predict_request(batch: int = 1, seed: int = 0, model_name: str = MODEL_NAME) -> predict_pb2.PredictRequest:
    """A Predict request on the benchmark model: `batch` rows of standard-normal float32."""
    x = np.random.default_rng(seed).standard_normal((batch, LAYERS[0])).astype(np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    tensor_encode.array_to_proto(x, request.inputs[INPUT])
    return request


def decode_inputs(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """Request inputs as arrays (tensor_content -> np.frombuffer, no per-element loop)."""
    return {alias: tensor_codec.proto_to_array(proto) for alias, proto in request.inputs.items()}


def encode_response(
    request: predict_pb2.PredictRequest, outputs: dict[str, np.ndarray]
) -> predict_pb2.PredictResponse:
    """A PredictResponse for `outputs`, echoing the request's model spec as TF Serving does."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.signature_name = request.model_spec.signature_name or SIGNATURE
    for alias, array in outputs.items():
        tensor_encode.array_to_proto(array, response.outputs[alias])
    return response
