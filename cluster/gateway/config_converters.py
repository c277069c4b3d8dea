"""TF Serving's config protos (text format or messages) <-> `cluster.config` dataclasses.

ModelServerConfig (`--model_config_file`, HandleReloadConfigRequest), BatchingParameters
(`--batching_parameters_file`) and MonitoringConfig (`--monitoring_config_file`). Validation
follows TF Serving, with its messages, so a config that TF refuses is refused here too.
Per-model replica counts and batching are not part of TF's ModelConfig: they stay None (the
server's settings apply).
"""

from __future__ import annotations

import os
from typing import TypeVar, cast

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from cluster.config import BatchingConfig, ModelConfig, ServerConfig, VersionPolicy
from cluster.errors import InvalidArgument
from exporter import storage
from protos.tensorflow_serving.config import model_server_config_pb2, monitoring_config_pb2, ssl_config_pb2
from protos.tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

T = TypeVar("T")

DEFAULT_PLATFORM = "tensorflow"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_UNSUPPORTED_CONFIG = (
    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
    "Only ModelConfigList is currently supported"
)


def _parse_text(text: str, message: Message, what: str) -> None:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid {what} text: {exc}") from exc


def read_text_file(path_or_uri: str) -> str:
    """A config file's text, from a local path or any pyarrow.fs URI (as TF reads any filesystem)."""
    try:
        fs, path = storage.resolve(path_or_uri)
        with fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"Could not read config file {path_or_uri}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# ModelServerConfig


def _version_policy(config: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=max(1, policy.latest.num_versions))
    return VersionPolicy()


def absolute_base_path(path: str) -> str:
    """A relative local base path made absolute against the working directory; URIs are kept.

    TF Serving refuses relative base paths; we accept them (handy from a checkout) but make them
    absolute here, at every entry point, because replicas may run in another directory, and so
    that a config re-read from the same file compares equal to the one it replaces.
    """
    if storage.is_uri(path) or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def _model_config(config: model_server_config_pb2.ModelConfig) -> ModelConfig:
    if config.model_type and config.model_platform:
        raise InvalidArgument("Illegal setting both model_type(deprecated) and model_platform.")
    if not config.base_path:
        raise InvalidArgument(f"Expected model {config.name} to have an absolute path or URI; found: ")
    return ModelConfig(
        name=config.name,
        base_path=absolute_base_path(config.base_path),
        platform=config.model_platform or DEFAULT_PLATFORM,
        version_policy=_version_policy(config),
        version_labels=tuple(sorted(config.version_labels.items())),
    )


def server_config_from_proto(
    message: model_server_config_pb2.ModelServerConfig, *, allow_empty: bool = False
) -> ServerConfig:
    """A ModelServerConfig as a ServerConfig; only `model_config_list` is supported.

    `allow_empty` accepts a config with nothing set (an empty file serves no models, as in TF);
    HandleReloadConfigRequest refuses it like any other non-list config.
    """
    choice = message.WhichOneof("config")
    if choice is None and allow_empty:
        return ServerConfig()
    if choice != "model_config_list":
        raise InvalidArgument(_UNSUPPORTED_CONFIG)
    models = []
    names: set[str] = set()
    for config in message.model_config_list.config:
        if config.name in names:
            raise InvalidArgument(f"Illegal to list model {config.name} multiple times in config list")
        names.add(config.name)
        models.append(_model_config(config))
    return ServerConfig(tuple(models))


def server_config_from_text(text: str) -> ServerConfig:
    """A text-format ModelServerConfig (the `--model_config_file` format) as a ServerConfig."""
    message = model_server_config_pb2.ModelServerConfig()
    _parse_text(text, message, "ModelServerConfig")
    return server_config_from_proto(message, allow_empty=True)


def load_server_config(path_or_uri: str) -> ServerConfig:
    """Reads and converts a `--model_config_file` (also what a config-file poll calls)."""
    return server_config_from_text(read_text_file(path_or_uri))


def server_config_to_proto(config: ServerConfig) -> model_server_config_pb2.ModelServerConfig:
    """The reverse: what a client sends to HandleReloadConfigRequest for this ServerConfig."""
    message = model_server_config_pb2.ModelServerConfig()
    message.model_config_list.SetInParent()
    for model in config.models:
        entry = message.model_config_list.config.add(
            name=model.name, base_path=model.base_path, model_platform=model.platform
        )
        policy = model.version_policy
        if policy.kind == "all":
            entry.model_version_policy.all.SetInParent()
        elif policy.kind == "specific":
            entry.model_version_policy.specific.versions.extend(policy.versions)
        else:
            entry.model_version_policy.latest.num_versions = policy.num_versions
        for label, version in model.version_labels:
            entry.version_labels[label] = version
    return message


def server_config_to_text(config: ServerConfig) -> str:
    return text_format.MessageToString(server_config_to_proto(config))


# ---------------------------------------------------------------------------------------------
# BatchingParameters


def batching_from_proto(message: session_bundle_config_pb2.BatchingParameters) -> BatchingConfig:
    """BatchingParameters as a BatchingConfig: unset wrappers take the scheduler's defaults.

    Validates as TF's batching session does: positive sizes, and `allowed_batch_sizes` strictly
    increasing with the last entry equal to the largest batch (`max_execution_batch_size` when
    large-batch splitting is on, else `max_batch_size`).
    """
    defaults = BatchingConfig()

    def value(name: str, default: T) -> T:
        # The wrapper fields (google.protobuf.*Value) hold the type of their default.
        return cast(T, getattr(message, name).value) if message.HasField(name) else default

    config = BatchingConfig(
        max_batch_size=value("max_batch_size", defaults.max_batch_size),
        batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(message.allowed_batch_sizes),
        enable_large_batch_splitting=value("enable_large_batch_splitting", False),
        max_execution_batch_size=value("max_execution_batch_size", cast(int | None, None)),
        pad_variable_length_inputs=message.pad_variable_length_inputs,
    )
    _validate_batching(config)
    return config


def _validate_batching(config: BatchingConfig) -> None:
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(config, name) <= 0:
            raise InvalidArgument(f"{name} must be positive; was {getattr(config, name)}")
    if config.batch_timeout_micros < 0:
        raise InvalidArgument(f"batch_timeout_micros must be non-negative; was {config.batch_timeout_micros}")
    if not config.allowed_batch_sizes:
        return
    last = 0
    for size in config.allowed_batch_sizes:
        if size <= last:
            raise InvalidArgument("allowed_batch_sizes entries must be monotonically increasing")
        last = size
    largest = config.max_batch_size
    if config.enable_large_batch_splitting and config.max_execution_batch_size is not None:
        largest = config.max_execution_batch_size
    if last != largest:
        raise InvalidArgument(
            f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was {last}; "
            f"expected {largest}"
        )


def batching_from_text(text: str) -> BatchingConfig:
    """A text-format BatchingParameters (the `--batching_parameters_file` format)."""
    message = session_bundle_config_pb2.BatchingParameters()
    _parse_text(text, message, "BatchingParameters")
    return batching_from_proto(message)


def batching_to_proto(config: BatchingConfig) -> session_bundle_config_pb2.BatchingParameters:
    message = session_bundle_config_pb2.BatchingParameters()
    message.max_batch_size.value = config.max_batch_size
    message.batch_timeout_micros.value = config.batch_timeout_micros
    message.max_enqueued_batches.value = config.max_enqueued_batches
    message.num_batch_threads.value = config.num_batch_threads
    message.enable_large_batch_splitting.value = config.enable_large_batch_splitting
    if config.max_execution_batch_size is not None:
        message.max_execution_batch_size.value = config.max_execution_batch_size
    message.allowed_batch_sizes.extend(config.allowed_batch_sizes)
    message.pad_variable_length_inputs = config.pad_variable_length_inputs
    return message


# ---------------------------------------------------------------------------------------------
# MonitoringConfig


def monitoring_path_from_text(text: str) -> str | None:
    """The Prometheus path of a text MonitoringConfig, or None when Prometheus is not enabled."""
    message = monitoring_config_pb2.MonitoringConfig()
    _parse_text(text, message, "MonitoringConfig")
    prometheus = message.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PROMETHEUS_PATH


def ssl_credentials_from_text(text: str) -> grpc.ServerCredentials:
    """TF Serving's SSLConfig (text format) as gRPC server credentials.

    `server_key`/`server_cert` are PEM; `custom_ca` (PEM roots) verifies client certificates,
    which `client_verify` requires.
    """
    config = ssl_config_pb2.SSLConfig()
    _parse_text(text, config, "SSLConfig")
    if not config.server_key or not config.server_cert:
        raise InvalidArgument("SSLConfig needs server_key and server_cert (PEM)")
    if config.client_verify and not config.custom_ca:
        raise InvalidArgument("SSLConfig.client_verify needs custom_ca to verify client certificates")
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )
