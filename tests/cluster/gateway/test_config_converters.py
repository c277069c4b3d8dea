"""Text-format ModelServerConfig / BatchingParameters / MonitoringConfig -> cluster.config."""

from __future__ import annotations

import pathlib

import pytest

from cluster.config import BatchingConfig, ModelConfig, ServerConfig, VersionPolicy
from cluster.errors import InvalidArgument
from cluster.gateway import config_converters as cc
from protos.tensorflow_serving.config import model_server_config_pb2

# spec §10, verbatim.
MODEL_SERVER_CONFIG = """
model_config_list {
  config {
    name: 'my_first_model'
    base_path: '/tmp/my_first_model/'
    model_platform: 'tensorflow'
  }
  config {
    name: 'my_second_model'
    base_path: '/tmp/my_second_model/'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 42 versions: 43 } }
    version_labels { key: 'stable' value: 42 }
    version_labels { key: 'canary' value: 43 }
  }
}
"""

# spec §10, verbatim.
BATCHING_PARAMETERS = """
max_batch_size { value: 128 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000000 }
num_batch_threads { value: 8 }
allowed_batch_sizes: 32
allowed_batch_sizes: 128
pad_variable_length_inputs: true
"""


def test_spec_example_model_server_config() -> None:
    config = cc.server_config_from_text(MODEL_SERVER_CONFIG)
    assert config == ServerConfig(
        (
            ModelConfig("my_first_model", "/tmp/my_first_model/", "tensorflow", VersionPolicy()),
            ModelConfig(
                "my_second_model",
                "/tmp/my_second_model/",
                "tensorflow",
                VersionPolicy("specific", versions=(42, 43)),
                version_labels=(("canary", 43), ("stable", 42)),
            ),
        )
    )
    assert config.models[0].num_replicas is None and config.models[0].batching is None
    assert config.model("my_second_model").label_map() == {"stable": 42, "canary": 43}


@pytest.mark.parametrize(
    ("policy_text", "expected"),
    [
        ("latest { num_versions: 2 }", VersionPolicy("latest", num_versions=2)),
        ("latest { num_versions: 0 }", VersionPolicy("latest", num_versions=1)),
        ("latest {}", VersionPolicy("latest", num_versions=1)),
        ("all {}", VersionPolicy("all")),
        ("specific { versions: 7 }", VersionPolicy("specific", versions=(7,))),
    ],
)
def test_version_policies(policy_text: str, expected: VersionPolicy) -> None:
    text = f"model_config_list {{ config {{ name: 'm' base_path: '/m' model_version_policy {{ {policy_text} }} }} }}"
    assert cc.server_config_from_text(text).models[0].version_policy == expected


def test_platform_defaults_to_tensorflow() -> None:
    config = cc.server_config_from_text("model_config_list { config { name: 'm' base_path: 's3://b/m' } }")
    assert config.models[0].platform == "tensorflow"


def test_empty_file_serves_nothing_but_reload_refuses_it() -> None:
    assert cc.server_config_from_text("") == ServerConfig()
    with pytest.raises(InvalidArgument, match="Only ModelConfigList is currently supported"):
        cc.server_config_from_proto(model_server_config_pb2.ModelServerConfig())


def test_custom_model_config_is_refused_with_tf_message() -> None:
    text = "custom_model_config { type_url: 'type.googleapis.com/x.Y' value: '' }"
    with pytest.raises(InvalidArgument) as info:
        cc.server_config_from_text(text)
    assert str(info.value) == (
        "ServerModelConfig type not supported by HandleReloadConfigRequest. "
        "Only ModelConfigList is currently supported"
    )


def test_duplicate_names_and_empty_base_path() -> None:
    duplicate = (
        "model_config_list { config { name: 'm' base_path: '/a' } config { name: 'm' base_path: '/b' } }"
    )
    with pytest.raises(InvalidArgument, match="^Illegal to list model m multiple times in config list$"):
        cc.server_config_from_text(duplicate)
    with pytest.raises(InvalidArgument, match="Expected model m to have an absolute path or URI"):
        cc.server_config_from_text("model_config_list { config { name: 'm' } }")


def test_model_type_and_platform_together_are_illegal() -> None:
    text = "model_config_list { config { name: 'm' base_path: '/m' model_type: TENSORFLOW model_platform: 'tensorflow' } }"
    with pytest.raises(InvalidArgument, match="Illegal setting both model_type"):
        cc.server_config_from_text(text)


def test_relative_base_paths_become_absolute_and_others_are_kept(monkeypatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)
    text = (
        "model_config_list { config { name: 'a' base_path: 'models/a' }"
        " config { name: 'b' base_path: '/abs/b/' } config { name: 'c' base_path: 'gs://bucket/c' } }"
    )
    config = cc.server_config_from_text(text)
    assert [m.base_path for m in config.models] == [
        str(tmp_path / "models" / "a"),
        "/abs/b/",
        "gs://bucket/c",
    ]
    assert cc.server_config_from_text(text) == config  # a re-read compares equal


def test_text_that_does_not_parse() -> None:
    with pytest.raises(InvalidArgument, match="Invalid ModelServerConfig text"):
        cc.server_config_from_text("model_config_list { config { nme: 'm' } }")


def test_server_config_round_trip() -> None:
    config = cc.server_config_from_text(MODEL_SERVER_CONFIG + "")
    assert cc.server_config_from_proto(cc.server_config_to_proto(config)) == config
    assert cc.server_config_from_text(cc.server_config_to_text(config)) == config
    every_policy = ServerConfig(
        (
            ModelConfig("a", "/a", version_policy=VersionPolicy("all")),
            ModelConfig("b", "/b", version_policy=VersionPolicy("latest", num_versions=3)),
        )
    )
    assert cc.server_config_from_proto(cc.server_config_to_proto(every_policy)) == every_policy


def test_load_server_config_reads_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(MODEL_SERVER_CONFIG)
    assert cc.load_server_config(str(path)) == cc.server_config_from_text(MODEL_SERVER_CONFIG)
    with pytest.raises(InvalidArgument, match="Could not read config file"):
        cc.load_server_config(str(tmp_path / "missing.config"))


def test_spec_example_batching_parameters() -> None:
    assert cc.batching_from_text(BATCHING_PARAMETERS) == BatchingConfig(
        max_batch_size=128,
        batch_timeout_micros=0,
        max_enqueued_batches=1000000,
        num_batch_threads=8,
        allowed_batch_sizes=(32, 128),
        pad_variable_length_inputs=True,
    )


def test_unset_batching_fields_take_defaults_and_round_trip() -> None:
    assert cc.batching_from_text("") == BatchingConfig()
    config = cc.batching_from_text(
        "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 16"
    )
    assert config.max_execution_batch_size == 16 and config.enable_large_batch_splitting
    assert cc.batching_from_proto(cc.batching_to_proto(config)) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "max_batch_size { value: 128 } allowed_batch_sizes: 64 allowed_batch_sizes: 32",
            "^allowed_batch_sizes entries must be monotonically increasing$",
        ),
        (
            "max_batch_size { value: 128 } allowed_batch_sizes: 32 allowed_batch_sizes: 32",
            "^allowed_batch_sizes entries must be monotonically increasing$",
        ),
        (
            "max_batch_size { value: 128 } allowed_batch_sizes: 32 allowed_batch_sizes: 64",
            "^Last entry in allowed_batch_sizes must match max_batch_size; last entry was 64; expected 128$",
        ),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative"),
    ],
)
def test_invalid_batching_parameters(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        cc.batching_from_text(text)


def test_monitoring_config() -> None:
    assert cc.monitoring_path_from_text('prometheus_config { enable: true, path: "/metrics" }') == "/metrics"
    assert (
        cc.monitoring_path_from_text("prometheus_config { enable: true }") == "/monitoring/prometheus/metrics"
    )
    assert cc.monitoring_path_from_text('prometheus_config { path: "/metrics" }') is None
    assert cc.monitoring_path_from_text("") is None
    with pytest.raises(InvalidArgument, match="Invalid MonitoringConfig text"):
        cc.monitoring_path_from_text("prometheus { }")
