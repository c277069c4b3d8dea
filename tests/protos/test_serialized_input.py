"""The server parses a client's `Input` as `SerializedInput`, keeping each Example as bytes."""

from __future__ import annotations

from protos.tensorflow.core.example import example_pb2, feature_pb2
from protos.tensorflow_serving.apis import classification_pb2, input_pb2
from protos.tensorflow_serving.apis.internal import serialized_input_pb2


def _example(**features: float | bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        else:
            feature.float_list.value.append(value)
    return example


def test_example_list_parses_as_serialized_bytes() -> None:
    examples = [_example(x=1.5), _example(x=-2.0), _example(name=b"\x00\xffz")]
    client = input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples))
    server = serialized_input_pb2.SerializedInput.FromString(client.SerializeToString())
    assert server.WhichOneof("kind") == "example_list"
    assert len(server.example_list.examples) == 3
    for raw, original in zip(server.example_list.examples, examples, strict=True):
        assert isinstance(raw, bytes)
        assert raw == original.SerializeToString()
        assert example_pb2.Example.FromString(raw) == original


def test_example_list_with_context_and_merge_semantics() -> None:
    context = _example(shared=3.0, x=0.0)
    examples = [_example(x=1.0), _example(x=2.0)]
    client = input_pb2.Input(
        example_list_with_context=input_pb2.ExampleListWithContext(examples=examples, context=context)
    )
    server = serialized_input_pb2.SerializedInput.FromString(client.SerializeToString())
    assert server.WhichOneof("kind") == "example_list_with_context"
    body = server.example_list_with_context
    assert example_pb2.Example.FromString(body.context) == context
    # TF Serving feeds context bytes + example bytes: protobuf merge, the example's features win.
    merged = [example_pb2.Example.FromString(body.context + raw) for raw in body.examples]
    assert [m.features.feature["x"].float_list.value[0] for m in merged] == [1.0, 2.0]
    assert all(m.features.feature["shared"].float_list.value[0] == 3.0 for m in merged)


def test_classification_request_input_field_is_serialized_input_compatible() -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    request.input.example_list.examples.append(_example(x=4.0))
    parsed = classification_pb2.ClassificationRequest.FromString(request.SerializeToString())
    # Field 2 of ClassificationRequest carries the Input: re-read it as SerializedInput.
    raw_input = parsed.input.SerializeToString()
    server = serialized_input_pb2.SerializedInput.FromString(raw_input)
    example = example_pb2.Example.FromString(server.example_list.examples[0])
    assert example.features.feature["x"] == feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[4.0]))


def test_empty_input_has_no_kind() -> None:
    server = serialized_input_pb2.SerializedInput.FromString(input_pb2.Input().SerializeToString())
    assert server.WhichOneof("kind") is None
