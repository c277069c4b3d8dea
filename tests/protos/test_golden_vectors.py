"""The golden wire vectors of the spec (§13): our generated messages produce TF Serving's bytes."""

from __future__ import annotations

from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2

PREDICT_REQUEST_HEX = (
    "0a240a0d68616c665f706c75735f74776f1202087b1a0f73657276696e675f64656661756c74"
    "121b0a0178121608011204120208032a0c0000803f000000400000a040"
)
PREDICT_RESPONSE_HEX = (
    "0a1b0a0179121608011204120208032a0c000020400000404000009040"
    "12240a0d68616c665f706c75735f74776f1202087b1a0f73657276696e675f64656661756c74"
)


def _model_spec() -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name="half_plus_two", signature_name="serving_default")
    spec.version.value = 123
    return spec


def _float_vector(values: list[float]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
        float_val=values,
    )


def test_predict_request_bytes() -> None:
    request = predict_pb2.PredictRequest(model_spec=_model_spec())
    request.inputs["x"].CopyFrom(_float_vector([1.0, 2.0, 5.0]))
    data = request.SerializeToString(deterministic=True)
    assert len(data) == 67
    assert data.hex() == PREDICT_REQUEST_HEX


def test_predict_request_parses_back() -> None:
    request = predict_pb2.PredictRequest.FromString(bytes.fromhex(PREDICT_REQUEST_HEX))
    assert request.model_spec.name == "half_plus_two"
    assert request.model_spec.WhichOneof("version_choice") == "version"
    assert request.model_spec.version.value == 123
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["x"]
    tensor = request.inputs["x"]
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [3]
    assert list(tensor.float_val) == [1.0, 2.0, 5.0]
    assert not request.HasField("request_options")


def test_predict_response_bytes_put_outputs_first() -> None:
    response = predict_pb2.PredictResponse(model_spec=_model_spec())
    response.outputs["y"].CopyFrom(_float_vector([2.5, 3.0, 4.5]))
    data = response.SerializeToString(deterministic=True)
    # outputs (field 1) precede model_spec (field 2) whatever the declaration order.
    assert data.hex() == PREDICT_RESPONSE_HEX


def test_predict_response_parses_back() -> None:
    response = predict_pb2.PredictResponse.FromString(bytes.fromhex(PREDICT_RESPONSE_HEX))
    assert response.model_spec == _model_spec()
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]


def test_unknown_fields_survive_a_round_trip() -> None:
    # A newer client may send fields we do not know (here: field 99, varint 7).
    data = bytes.fromhex(PREDICT_REQUEST_HEX) + bytes([0x98, 0x06, 0x07])
    assert predict_pb2.PredictRequest.FromString(data).SerializeToString() == data
