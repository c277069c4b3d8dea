"""A small synchronous gRPC client for Tessera (or any TF Serving server).

Speaks TF Serving's PredictionService and ModelService. Arrays go in and come out as numpy;
server errors surface as `grpc.RpcError` (with TF Serving's status code and message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format

from cluster.client.examples import Features, make_input
from cluster.client.tensors import make_ndarray, make_tensor_proto
from exporter.signature import CLASSIFY_METHOD, REGRESS_METHOD
from protos.tensorflow.core.example import example_pb2
from protos.tensorflow.core.framework import tensor_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from protos.tensorflow_serving.config import model_server_config_pb2

# TF Serving accepts and sends messages up to 2 GiB - 1; grpcio's default receive limit is 4 MiB.
MAX_MESSAGE_BYTES = 2**31 - 1
_METHODS = {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD}

Examples = Sequence[Features | example_pb2.Example]
ClassifyResult = list[list[tuple[str, float]]]


def model_spec(
    model: str, signature_name: str | None = None, version: int | None = None, label: str | None = None
) -> model_pb2.ModelSpec:
    """A ModelSpec; `version` and `label` are exclusive (neither means the latest version)."""
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    spec = model_pb2.ModelSpec(name=model, signature_name=signature_name or "")
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label
    return spec


def classifications(result: classification_pb2.ClassificationResult) -> ClassifyResult:
    """Per example, its (label, score) pairs in the server's order."""
    return [[(c.label, c.score) for c in entry.classes] for entry in result.classifications]


class TesseraClient:
    """A blocking client on one channel. Usable as a context manager; `close()` frees the channel.

    `target` is "host:port"; `timeout` (seconds) is the default deadline of every call.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        channel_options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *options,
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self.timeout = timeout
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self.model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def predict(
        self,
        model: str,
        inputs: Mapping[str, Any],
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
        output_filter: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs a Predict signature. Inputs are arrays, Python values or ready TensorProtos."""
        request = predict_pb2.PredictRequest(
            model_spec=model_spec(model, signature_name, version, label), output_filter=output_filter or ()
        )
        for alias, value in inputs.items():
            tensor = value if isinstance(value, tensor_pb2.TensorProto) else make_tensor_proto(value)
            request.inputs[alias].CopyFrom(tensor)
        response = self.prediction.Predict(request, timeout=self.timeout)
        return {alias: make_ndarray(tensor) for alias, tensor in response.outputs.items()}

    def classify(
        self,
        model: str,
        examples: Examples,
        context: Features | None = None,
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> ClassifyResult:
        """Classifies examples: per example, the (label, score) pairs."""
        request = classification_pb2.ClassificationRequest(
            model_spec=model_spec(model, signature_name, version, label), input=make_input(examples, context)
        )
        return classifications(self.prediction.Classify(request, timeout=self.timeout).result)

    def regress(
        self,
        model: str,
        examples: Examples,
        context: Features | None = None,
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> list[float]:
        """Regresses examples: one value per example."""
        request = regression_pb2.RegressionRequest(
            model_spec=model_spec(model, signature_name, version, label), input=make_input(examples, context)
        )
        response = self.prediction.Regress(request, timeout=self.timeout)
        return [r.value for r in response.result.regressions]

    def multi_inference(
        self,
        model: str,
        examples: Examples,
        tasks: Mapping[str, str],
        context: Features | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> dict[str, ClassifyResult | list[float]]:
        """Runs several signatures over the same examples in one call.

        `tasks` maps signature name -> "classify" or "regress" (or the full method name).
        Returns, per signature, what `classify` or `regress` would.
        """
        request = inference_pb2.MultiInferenceRequest(input=make_input(examples, context))
        for signature, method in tasks.items():
            request.tasks.add(
                model_spec=model_spec(model, signature, version, label), method_name=_METHODS.get(method, method)
            )
        response = self.prediction.MultiInference(request, timeout=self.timeout)
        out: dict[str, ClassifyResult | list[float]] = {}
        for task, result in zip(request.tasks, response.results, strict=False):
            if result.WhichOneof("result") == "classification_result":
                out[task.model_spec.signature_name] = classifications(result.classification_result)
            else:
                out[task.model_spec.signature_name] = [r.value for r in result.regression_result.regressions]
        return out

    def get_model_metadata(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> get_model_metadata_pb2.SignatureDefMap:
        """The signatures of the served version (its `SignatureDefMap`)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(model, None, version, label), metadata_field=["signature_def"]
        )
        response = self.prediction.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(signatures):
            raise ValueError(f"unexpected metadata type {response.metadata['signature_def'].type_url}")
        return signatures

    def get_model_status(
        self, model: str, version: int | None = None
    ) -> list[get_model_status_pb2.ModelVersionStatus]:
        """The state of one version, or of every version the server knows (newest first)."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(model, version=version))
        return list(self.model_service.GetModelStatus(request, timeout=self.timeout).model_version_status)

    def reload_config(
        self, config: model_server_config_pb2.ModelServerConfig | str
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replaces the server's model config (a ModelServerConfig or its text format)."""
        if isinstance(config, str):
            config = text_format.Parse(config, model_server_config_pb2.ModelServerConfig())
        request = model_management_pb2.ReloadConfigRequest(config=config)
        return self.model_service.HandleReloadConfigRequest(request, timeout=self.timeout)
