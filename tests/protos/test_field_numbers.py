"""Field numbers, types, labels and oneofs of the key messages match the spec's tables (§4, §5).

Each field is described as the spec writes it: `rep T`, `opt T` (proto3 optional), `oneof NAME T`,
`map<K, V>` or a bare `T`, where T is a scalar type name or a message/enum full name.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from protos.tensorflow.core.example import example_pb2, feature_pb2
from protos.tensorflow.core.framework import resource_handle_pb2, tensor_pb2, tensor_shape_pb2
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2, struct_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    logging_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
    status_pb2,
)
from protos.tensorflow_serving.apis.internal import serialized_input_pb2
from protos.tensorflow_serving.config import (
    file_system_storage_path_source_pb2,
    logging_config_pb2,
    model_server_config_pb2,
)
from protos.tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

_SCALARS = {
    getattr(FieldDescriptor, f"TYPE_{n.upper()}"): n
    for n in ("double", "float", "int64", "uint64", "int32", "bool", "string", "bytes", "uint32", "sint64")
}
TP = "tensorflow.TensorProto"
SPEC = "tensorflow.serving.ModelSpec"
INPUT = "tensorflow.serving.Input"
I64 = "google.protobuf.Int64Value"


def _type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return _SCALARS[field.type]


def describe(field: FieldDescriptor) -> str:
    """The field's type the way the spec tables write it."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return f"map<{_type(key)}, {_type(value)}>"
    if field.is_repeated:
        return f"rep {_type(field)}"
    oneof = field.containing_oneof
    if oneof is not None:
        # proto3 `optional` is a synthetic oneof named "_<field>".
        if oneof.name == f"_{field.name}":
            return f"opt {_type(field)}"
        return f"oneof {oneof.name} {_type(field)}"
    return _type(field)


EXPECTED: list[tuple[Descriptor, dict[str, tuple[int, str]]]] = [
    (model_pb2.ModelSpec.DESCRIPTOR, {
        "name": (1, "string"), "version": (2, f"oneof version_choice {I64}"),
        "version_label": (4, "oneof version_choice string"), "signature_name": (3, "string"),
    }),
    (predict_pb2.PredictRequest.DESCRIPTOR, {
        "model_spec": (1, SPEC), "inputs": (2, f"map<string, {TP}>"), "output_filter": (3, "rep string"),
        "predict_streamed_options": (5, "tensorflow.serving.PredictStreamedOptions"),
        "client_id": (6, "opt bytes"),
        "request_options": (7, "opt tensorflow.serving.PredictRequest.RequestOptions"),
    }),
    (predict_pb2.PredictRequest.RequestOptions.DESCRIPTOR, {
        "client_id": (1, "opt bytes"),
        "deterministic_mode": (2, "opt tensorflow.serving.PredictRequest.RequestOptions.DeterministicMode"),
        "return_additional_arrays_from_prefill": (3, "opt bool"), "return_stoptokens": (4, "rep int64"),
        "return_all_stoptokens": (9, "opt bool"), "max_cache_length": (6, "opt int64"),
        "handshake": (13, "opt tensorflow.serving.PredictRequest.RequestOptions.Handshake"),
    }),
    (predict_pb2.PredictStreamedOptions.DESCRIPTOR, {
        "request_state": (1, "tensorflow.serving.PredictStreamedOptions.RequestState"),
        "split_dimensions": (2, "map<string, int32>"), "return_single_response": (3, "bool"),
    }),
    (predict_pb2.PredictResponse.DESCRIPTOR, {"model_spec": (2, SPEC), "outputs": (1, f"map<string, {TP}>")}),
    (input_pb2.Input.DESCRIPTOR, {
        "example_list": (1, "oneof kind tensorflow.serving.ExampleList"),
        "example_list_with_context": (2, "oneof kind tensorflow.serving.ExampleListWithContext"),
    }),
    (input_pb2.ExampleListWithContext.DESCRIPTOR, {
        "examples": (1, "rep tensorflow.Example"), "context": (2, "tensorflow.Example"),
    }),
    (serialized_input_pb2.SerializedExampleListWithContext.DESCRIPTOR, {
        "examples": (1, "rep bytes"), "context": (2, "bytes"),
    }),
    (classification_pb2.Class.DESCRIPTOR, {"label": (1, "string"), "score": (2, "float")}),
    (classification_pb2.ClassificationRequest.DESCRIPTOR, {"model_spec": (1, SPEC), "input": (2, INPUT)}),
    (classification_pb2.ClassificationResponse.DESCRIPTOR, {
        "model_spec": (2, SPEC), "result": (1, "tensorflow.serving.ClassificationResult"),
    }),
    (regression_pb2.RegressionResponse.DESCRIPTOR, {
        "model_spec": (2, SPEC), "result": (1, "tensorflow.serving.RegressionResult"),
    }),
    (inference_pb2.InferenceResult.DESCRIPTOR, {
        "model_spec": (1, SPEC),
        "classification_result": (2, "oneof result tensorflow.serving.ClassificationResult"),
        "regression_result": (3, "oneof result tensorflow.serving.RegressionResult"),
    }),
    (inference_pb2.MultiInferenceRequest.DESCRIPTOR, {
        "tasks": (1, "rep tensorflow.serving.InferenceTask"), "input": (2, INPUT),
    }),
    (get_model_metadata_pb2.GetModelMetadataResponse.DESCRIPTOR, {
        "model_spec": (1, SPEC), "metadata": (2, "map<string, google.protobuf.Any>"),
    }),
    (get_model_status_pb2.ModelVersionStatus.DESCRIPTOR, {
        "version": (1, "int64"), "state": (2, "tensorflow.serving.ModelVersionStatus.State"),
        "status": (3, "tensorflow.serving.StatusProto"),
    }),
    (status_pb2.StatusProto.DESCRIPTOR, {
        "error_code": (1, "tensorflow.error.Code"), "error_message": (2, "string"),
    }),
    (model_management_pb2.Metric.DESCRIPTOR, {
        "name": (1, "string"), "int64_value_increase": (2, "oneof value_increase int64"),
    }),
    (model_server_config_pb2.ModelConfig.DESCRIPTOR, {
        "name": (1, "string"), "base_path": (2, "string"), "model_type": (3, "tensorflow.serving.ModelType"),
        "model_platform": (4, "string"),
        "model_version_policy": (
            7, "tensorflow.serving.FileSystemStoragePathSourceConfig.ServableVersionPolicy"),
        "version_labels": (8, "map<string, int64>"), "logging_config": (6, "tensorflow.serving.LoggingConfig"),
    }),
    (model_server_config_pb2.ModelServerConfig.DESCRIPTOR, {
        "model_config_list": (1, "oneof config tensorflow.serving.ModelConfigList"),
        "custom_model_config": (2, "oneof config google.protobuf.Any"),
    }),
    (file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy.DESCRIPTOR, {
        "latest": (100, "oneof policy_choice tensorflow.serving.FileSystemStoragePathSourceConfig."
                        "ServableVersionPolicy.Latest"),
        "all": (101, "oneof policy_choice tensorflow.serving.FileSystemStoragePathSourceConfig."
                     "ServableVersionPolicy.All"),
        "specific": (102, "oneof policy_choice tensorflow.serving.FileSystemStoragePathSourceConfig."
                          "ServableVersionPolicy.Specific"),
    }),
    (logging_config_pb2.PerTaskSamplingConfig.DESCRIPTOR, {
        "dc": (1, "string"), "task_index": (2, "opt int32"), "sampling_rate": (3, "double"),
    }),
    (logging_pb2.LogMetadata.DESCRIPTOR, {
        "model_spec": (1, SPEC), "sampling_config": (2, "tensorflow.serving.SamplingConfig"),
        "saved_model_tags": (3, "rep string"), "timestamp_secs": (4, "int64"), "dc": (5, "string"),
        "request_origin": (6, "string"), "request_criticality": (7, "string"),
        "safe_aggregation_privacy_key": (8, "int64"),
    }),
    (prediction_log_pb2.PredictionLog.DESCRIPTOR, {
        "log_metadata": (1, "tensorflow.serving.LogMetadata"),
        "classify_log": (2, "oneof log_type tensorflow.serving.ClassifyLog"),
        "regress_log": (3, "oneof log_type tensorflow.serving.RegressLog"),
        "predict_log": (6, "oneof log_type tensorflow.serving.PredictLog"),
        "predict_streamed_log": (7, "oneof log_type tensorflow.serving.PredictStreamedLog"),
        "multi_inference_log": (4, "oneof log_type tensorflow.serving.MultiInferenceLog"),
        "session_run_log": (5, "oneof log_type tensorflow.serving.SessionRunLog"),
    }),
    (session_bundle_config_pb2.BatchingParameters.DESCRIPTOR, {
        "max_batch_size": (1, I64), "batch_timeout_micros": (2, I64), "max_enqueued_batches": (3, I64),
        "num_batch_threads": (4, I64), "thread_pool_name": (5, "google.protobuf.StringValue"),
        "enable_large_batch_splitting": (8, "google.protobuf.BoolValue"),
        "max_execution_batch_size": (9, I64), "allowed_batch_sizes": (6, "rep int64"),
        "pad_variable_length_inputs": (7, "bool"),
    }),
    (tensor_pb2.TensorProto.DESCRIPTOR, {
        "dtype": (1, "tensorflow.DataType"), "tensor_shape": (2, "tensorflow.TensorShapeProto"),
        "version_number": (3, "int32"), "tensor_content": (4, "bytes"), "half_val": (13, "rep int32"),
        "float_val": (5, "rep float"), "double_val": (6, "rep double"), "int_val": (7, "rep int32"),
        "string_val": (8, "rep bytes"), "scomplex_val": (9, "rep float"), "int64_val": (10, "rep int64"),
        "bool_val": (11, "rep bool"), "dcomplex_val": (12, "rep double"),
        "resource_handle_val": (14, "rep tensorflow.ResourceHandleProto"),
        "variant_val": (15, "rep tensorflow.VariantTensorDataProto"), "uint32_val": (16, "rep uint32"),
        "uint64_val": (17, "rep uint64"), "float8_val": (18, "bytes"),
    }),
    (tensor_shape_pb2.TensorShapeProto.DESCRIPTOR, {
        "dim": (2, "rep tensorflow.TensorShapeProto.Dim"), "unknown_rank": (3, "bool"),
    }),
    (resource_handle_pb2.ResourceHandleProto.DESCRIPTOR, {
        "device": (1, "string"), "container": (2, "string"), "name": (3, "string"), "hash_code": (4, "uint64"),
        "maybe_type_name": (5, "string"),
        "dtypes_and_shapes": (6, "rep tensorflow.ResourceHandleProto.DtypeAndShape"),
    }),
    (feature_pb2.Feature.DESCRIPTOR, {
        "bytes_list": (1, "oneof kind tensorflow.BytesList"), "float_list": (2, "oneof kind tensorflow.FloatList"),
        "int64_list": (3, "oneof kind tensorflow.Int64List"),
    }),
    (example_pb2.SequenceExample.DESCRIPTOR, {
        "context": (1, "tensorflow.Features"), "feature_lists": (2, "tensorflow.FeatureLists"),
    }),
    (meta_graph_pb2.SignatureDef.DESCRIPTOR, {
        "inputs": (1, "map<string, tensorflow.TensorInfo>"), "outputs": (2, "map<string, tensorflow.TensorInfo>"),
        "method_name": (3, "string"), "defaults": (4, f"map<string, {TP}>"),
    }),
    (meta_graph_pb2.TensorInfo.DESCRIPTOR, {
        "name": (1, "oneof encoding string"),
        "coo_sparse": (4, "oneof encoding tensorflow.TensorInfo.CooSparse"),
        "composite_tensor": (5, "oneof encoding tensorflow.TensorInfo.CompositeTensor"),
        "dtype": (2, "tensorflow.DataType"), "tensor_shape": (3, "tensorflow.TensorShapeProto"),
    }),
    (struct_pb2.TypeSpecProto.DESCRIPTOR, {
        "type_spec_class": (1, "tensorflow.TypeSpecProto.TypeSpecClass"),
        "type_state": (2, "tensorflow.StructuredValue"), "type_spec_class_name": (3, "string"),
        "num_flat_components": (4, "int32"),
    }),
]


@pytest.mark.parametrize("descriptor, fields", EXPECTED, ids=[d.full_name for d, _ in EXPECTED])
def test_fields_match_the_spec(descriptor: Descriptor, fields: dict[str, tuple[int, str]]) -> None:
    actual = {f.name: (f.number, describe(f)) for f in descriptor.fields}
    assert actual == fields


def test_packages_are_tensorflows() -> None:
    assert tensor_pb2.DESCRIPTOR.package == "tensorflow"
    assert predict_pb2.DESCRIPTOR.package == "tensorflow.serving"
    assert serialized_input_pb2.DESCRIPTOR.package == "tensorflow.serving.internal"
    assert error_codes_pb2.DESCRIPTOR.package == "tensorflow.error"


def test_structured_value_int64_is_zigzag() -> None:
    field = struct_pb2.StructuredValue.DESCRIPTOR.fields_by_name["int64_value"]
    assert (field.number, field.type) == (12, FieldDescriptor.TYPE_SINT64)


def test_packed_numeric_tensor_fields() -> None:
    for name in ("half_val", "float_val", "int_val", "int64_val", "bool_val", "uint64_val"):
        assert tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name[name].is_packed, name


def test_enum_values() -> None:
    assert error_codes_pb2.Code.Value("UNAUTHENTICATED") == 16
    assert error_codes_pb2.Code.Value("DO_NOT_USE_RESERVED_FOR_FUTURE_EXPANSION_USE_DEFAULT_IN_SWITCH_INSTEAD_") == 20
    states = get_model_status_pb2.ModelVersionStatus.State
    assert [(n, states.Value(n)) for n in states.keys()] == [
        ("UNKNOWN", 0), ("START", 10), ("LOADING", 20), ("AVAILABLE", 30), ("UNLOADING", 40), ("END", 50),
    ]
    from protos.tensorflow.core.framework import types_pb2

    assert types_pb2.DT_BFLOAT16 == 14 and types_pb2.DT_UINT64 == 23 and types_pb2.DT_FLOAT4_E2M1FN == 33
    assert types_pb2.DT_HALF_REF == 119


def test_service_method_order() -> None:
    from protos.tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    prediction = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
    assert prediction.full_name == "tensorflow.serving.PredictionService"
    assert [m.name for m in prediction.methods] == [
        "Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata",
    ]
    model = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
    assert [m.name for m in model.methods] == ["GetModelStatus", "HandleReloadConfigRequest"]
    assert prediction.methods_by_name["Predict"].input_type.full_name == "tensorflow.serving.PredictRequest"
