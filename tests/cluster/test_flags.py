"""`tessera serve` flags: TF Serving's defaults and syntax, contradictions exit with status 2."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import pytest

from cluster.config import BatchingConfig, ModelConfig, ServeOptions, ServerConfig, VersionPolicy
from cluster.flags.gateway import parse_gateway_args
from cluster.flags.parsing import auto_gateway_processes, host_cpus
from cluster.flags.serve import parse_serve_args


def test_defaults_single_model_mode() -> None:
    options, config = parse_serve_args(["--model_base_path=/models/half"])
    # Every default is TF Serving's (and ours); the gateway processes depend on the host's cores.
    assert options.gateway_processes == auto_gateway_processes(host_cpus())
    assert dataclasses.replace(options, gateway_processes=1) == ServeOptions()
    assert (options.grpc_port, options.rest_port, options.host) == (8500, 0, "0.0.0.0")
    assert options.file_system_poll_wait_seconds == 1 and options.enable_model_warmup
    assert options.load_retry_interval_seconds == 60.0 and options.max_num_load_retries == 5
    assert options.ray_address is None and options.num_replicas == 1 and options.replica_num_cpus == 0.02
    # Replica hosts: 100 models per process, no memory budget, as many hosts as Ray places.
    assert (options.max_models_per_host, options.replica_memory_budget_bytes, options.max_replica_hosts) == (100, 0, 0)
    assert config == ServerConfig((ModelConfig("default", "/models/half", "tensorflow", VersionPolicy()),))


def test_equals_and_space_syntaxes_agree() -> None:
    equals = parse_serve_args(
        [
            "--port=9000",
            "--rest_api_port=9001",
            "--model_name=iris",
            "--model_base_path=/m/iris",
            "--num_replicas=3",
            "--replica_num_cpus=0.25",
            "--ray_address=auto",
            "--host=127.0.0.1",
            "--file_system_poll_wait_seconds=0",
            "--load_retry_interval_micros=1500000",
            "--rest_api_timeout_in_ms=500",
            "--max_num_load_retries=0",
        ]
    )
    spaced = parse_serve_args(
        [
            "--port",
            "9000",
            "--rest_api_port",
            "9001",
            "--model_name",
            "iris",
            "--model_base_path",
            "/m/iris",
            "--num_replicas",
            "3",
            "--replica_num_cpus",
            "0.25",
            "--ray_address",
            "auto",
            "--host",
            "127.0.0.1",
            "--file_system_poll_wait_seconds",
            "0",
            "--load_retry_interval_micros",
            "1500000",
            "--rest_api_timeout_in_ms",
            "500",
            "--max_num_load_retries",
            "0",
        ]
    )
    assert equals == spaced
    options, config = equals
    assert (options.grpc_port, options.rest_port, options.num_replicas, options.replica_num_cpus) == (
        9000,
        9001,
        3,
        0.25,
    )
    assert (options.ray_address, options.host, options.file_system_poll_wait_seconds) == (
        "auto",
        "127.0.0.1",
        0,
    )
    assert options.load_retry_interval_seconds == 1.5 and options.rest_api_timeout_in_ms == 500
    assert config.models[0].name == "iris"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], True),
        (["--enable_model_warmup"], True),
        (["--enable_model_warmup=false"], False),
        (["--enable_model_warmup=0"], False),
        (["--enable_model_warmup=1"], True),
        (["--enable_model_warmup=True"], True),
        (["--noenable_model_warmup"], False),
    ],
)
def test_boolean_forms(flags: list[str], expected: bool) -> None:
    options, _ = parse_serve_args(["--model_base_path=/m", *flags])
    assert options.enable_model_warmup is expected


def test_batching_without_a_file_uses_scheduler_defaults() -> None:
    options, _ = parse_serve_args(["--model_base_path=/m", "--enable_batching"])
    assert options.enable_batching and options.batching == BatchingConfig()
    options, _ = parse_serve_args(["--model_base_path=/m", "--enable_batching=false"])
    assert not options.enable_batching and options.batching is None


def test_files_are_read_through_the_config_converters(tmp_path: pathlib.Path) -> None:
    models = tmp_path / "models.config"
    models.write_text(
        "model_config_list { config { name: 'a' base_path: '/m/a' model_version_policy { all {} } }"
        " config { name: 'b' base_path: 'relative/b' } }"
    )
    batching = tmp_path / "batching.pbtxt"
    batching.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    options, config = parse_serve_args(
        [
            f"--model_config_file={models}",
            "--model_config_file_poll_wait_seconds=30",
            "--enable_batching=true",
            f"--batching_parameters_file={batching}",
            f"--monitoring_config_file={monitoring}",
            "--enable_serialization_as_tensor_content",
        ]
    )
    assert [m.name for m in config.models] == ["a", "b"]
    assert config.models[0].version_policy == VersionPolicy("all")
    assert config.models[1].base_path == os.path.join(os.getcwd(), "relative/b")  # made absolute
    assert options.model_config_file == str(models) and options.model_config_file_poll_wait_seconds == 30
    assert options.batching == BatchingConfig(max_batch_size=8, allowed_batch_sizes=(4, 8))
    assert options.monitoring_path == "/monitoring/prometheus/metrics"
    assert options.serialize_as_tensor_content


def test_uri_base_paths_are_kept_and_relative_ones_made_absolute() -> None:
    _, config = parse_serve_args(["--model_base_path=s3://bucket/models/m"])
    assert config.models[0].base_path == "s3://bucket/models/m"
    _, config = parse_serve_args(["--model_base_path=models/m"])
    assert config.models[0].base_path == os.path.join(os.getcwd(), "models/m")


def _exits(flags: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        parse_serve_args(flags)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model_base_path=/m", "--no_such_flag=1"], "unrecognized arguments: --no_such_flag=1"),
        (["--model_base=/m"], "unrecognized arguments"),  # no prefix abbreviations
        ([], "exactly one of --model_base_path"),
        (["--model_base_path=/m", "--model_config_file=/c"], "exactly one of --model_base_path"),
        (["--model_base_path=/m", "--batching_parameters_file=/b"], "without setting --enable_batching"),
        (["--model_base_path=/m", "--rest_api_port=8500"], "--rest_api_port must differ from --port"),
        (["--model_base_path=/m", "--port=9000", "--rest_api_port", "9000"], "must differ from --port"),
        (["--model_base_path=/m", "--port=70000"], "--port must be in 0..65535"),
        (["--model_base_path=/m", "--num_replicas=0"], "--num_replicas must be at least 1"),
        (["--model_base_path=/m", "--max_models_per_host=0"], "--max_models_per_host must be at least 1"),
        (["--model_base_path=/m", "--port=abc"], "invalid int value"),
        (["--model_base_path=/m", "--enable_batching=maybe"], "expected true/false/1/0"),
        (["--model_base_path=/m", "--model_name="], "--model_name must not be empty"),
        (["--model_base_path=/m", "--model_platform=caffe"], "--model_platform must be one of"),
        (["--model_config_file=/c", "--model_platform=onnx"], "set model_platform in the model config"),
        (["--model_base_path=/m", "--tensorflow_intra_op_parallelism=-1"], "must be at least 0"),
    ],
)
def test_contradictions_and_unknown_flags_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _exits(flags, capsys)
    assert message in err
    assert err.startswith("usage: tessera serve")


def test_bad_config_files_exit_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "Could not read config file" in _exits([f"--model_config_file={tmp_path / 'missing'}"], capsys)
    custom = tmp_path / "custom.config"
    custom.write_text("custom_model_config { type_url: 'x/y' }")
    assert "Only ModelConfigList is currently supported" in _exits([f"--model_config_file={custom}"], capsys)
    batching = tmp_path / "batching.pbtxt"
    batching.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    err = _exits(
        ["--model_base_path=/m", "--enable_batching", f"--batching_parameters_file={batching}"], capsys
    )
    assert "Last entry in allowed_batch_sizes must match max_batch_size" in err


def test_tls_and_socket_flags(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    options, _ = parse_serve_args(["--model_base_path=/m", "--grpc_socket_path=/tmp/t.sock"])
    assert options.grpc_socket_path == "/tmp/t.sock" and options.ssl_config_file == ""
    bad = tmp_path / "ssl.config"
    bad.write_text('server_cert: "only a cert"')
    with pytest.raises(SystemExit) as exit_info:
        parse_serve_args(["--model_base_path=/m", f"--ssl_config_file={bad}"])
    assert exit_info.value.code == 2
    assert "server_key and server_cert" in capsys.readouterr().err


def test_model_platform_and_session_threads() -> None:
    options, config = parse_serve_args(
        ["--model_base_path=/models/mlp", "--model_platform=onnx", "--tensorflow_intra_op_parallelism=2",
         "--tensorflow_inter_op_parallelism", "1"]
    )
    assert config == ServerConfig((ModelConfig("default", "/models/mlp", "onnx", VersionPolicy()),))
    assert options.session_threads == (2, 1)
    _, config = parse_serve_args(["--model_base_path=/m", "--model_platform=onnxruntime_onnx"])
    assert config.models[0].platform == "onnxruntime_onnx"


def test_max_request_fill_bytes() -> None:
    options, _ = parse_serve_args(["--model_base_path=/m"])
    assert options.max_request_fill_bytes == 64 * 1024 * 1024
    options, _ = parse_serve_args(["--model_base_path=/m", "--max_request_fill_bytes=0"])
    assert options.max_request_fill_bytes == 0  # no fill at all: every value must be sent
    with pytest.raises(SystemExit) as exit_info:
        parse_serve_args(["--model_base_path=/m", "--max_request_fill_bytes=-1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 8)])
def test_auto_gateway_processes_is_one_per_two_cores_between_1_and_8(cpus: int, expected: int) -> None:
    assert auto_gateway_processes(cpus) == expected


@pytest.mark.parametrize(("flag", "expected"), [("0", 0), ("3", 3), ("auto", auto_gateway_processes(host_cpus()))])
def test_gateway_processes_flag(flag: str, expected: int) -> None:
    options, _ = parse_serve_args(["--model_base_path=/m", f"--gateway_processes={flag}"])
    assert options.gateway_processes == expected


@pytest.mark.parametrize("flag", ["-1", "many", "1.5"])
def test_bad_gateway_processes_exit_with_status_2(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_serve_args(["--model_base_path=/m", f"--gateway_processes={flag}"])
    assert exit_info.value.code == 2
    assert "--gateway_processes" in capsys.readouterr().err


def test_gateway_flags_are_the_gateway_subset_and_need_a_ray_address(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_gateway_args(["--ray_address=head:6379", "--port=9000", "--rest_api_port=9001", "--reuse_port",
                               "--host=127.0.0.1", "--enable_serialization_as_tensor_content"])
    o = args.options
    assert (o.ray_address, o.grpc_port, o.rest_port, o.host) == ("head:6379", 9000, 9001, "127.0.0.1")
    assert o.serialize_as_tensor_content and args.reuse_port and args.gateway_id == "" and args.exit_with_parent is None
    defaults = parse_gateway_args(["--ray_address=auto"])
    assert (defaults.options.grpc_port, defaults.options.rest_port, defaults.reuse_port) == (8500, 0, False)
    for argv in (["--port=1"], ["--ray_address=auto", "--model_base_path=/m"],
                 ["--ray_address=auto", "--port=9000", "--rest_api_port=9000"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_gateway_args(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--ray_address" in err and "model_base_path" in err and "--rest_api_port must differ" in err


def test_grpc_channel_arguments_as_tf_serving_reads_them() -> None:
    # TF Serving's --grpc_channel_arguments: k=v,k=v; int-looking values go to gRPC as ints.
    flag = "--grpc_channel_arguments=grpc.max_connection_age_ms=30000, grpc.primary_user_agent=tessera,"
    expected = (("grpc.max_connection_age_ms", 30000), ("grpc.primary_user_agent", "tessera"))
    options, _ = parse_serve_args(["--model_base_path=/m", flag])
    assert options.grpc_channel_arguments == expected
    assert parse_gateway_args(["--ray_address=auto", flag]).options.grpc_channel_arguments == expected
    assert parse_serve_args(["--model_base_path=/m"])[0].grpc_channel_arguments == ()


@pytest.mark.parametrize("value", ["grpc.max_connection_age_ms", "=1", "a=1,b"])
def test_bad_grpc_channel_arguments_exit_with_status_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_gateway_args(["--ray_address=auto", f"--grpc_channel_arguments={value}"])
    assert exit_info.value.code == 2
    assert "--grpc_channel_arguments" in capsys.readouterr().err


def test_more_gateway_processes_get_the_same_channel_arguments() -> None:
    from cluster.gateway.gateway import grpc_server_options
    from cluster.gateway.processes import gateway_argv

    options, _ = parse_serve_args(["--model_base_path=/m",
                                   "--grpc_channel_arguments=grpc.max_connection_age_ms=30000,grpc.so_reuseport=0"])
    argv = gateway_argv(options, "127.0.0.1:6379", 8500, None)
    assert argv[3] == "gateway"
    child = parse_gateway_args(argv[4:])
    assert child.options.grpc_channel_arguments == options.grpc_channel_arguments
    # SO_REUSEPORT is the gateway's to set, before the channel arguments (grpc keeps the first).
    assert grpc_server_options(child.options, child.reuse_port)[0] == ("grpc.so_reuseport", 1)


def test_gateway_retained_heap_bytes_reaches_every_gateway_process() -> None:
    from cluster.gateway.processes import gateway_argv

    options, _ = parse_serve_args(["--model_base_path=/m"])
    assert options.gateway_retained_heap_bytes == 1 << 30
    options, _ = parse_serve_args(["--model_base_path=/m", "--gateway_retained_heap_bytes=0"])
    argv = gateway_argv(options, "auto", 9000, 9001)
    assert argv[3] == "gateway"
    assert parse_gateway_args(argv[4:]).options.gateway_retained_heap_bytes == 0  # the C library's defaults
    for parse in (lambda: parse_serve_args(["--model_base_path=/m", "--gateway_retained_heap_bytes=-1"]),
                  lambda: parse_gateway_args(["--ray_address=auto", "--gateway_retained_heap_bytes=-1"])):
        with pytest.raises(SystemExit) as exit_info:
            parse()
        assert exit_info.value.code == 2


def test_rest_max_connection_age_ms_is_off_by_default_and_reaches_every_gateway_process() -> None:
    from cluster.gateway.processes import gateway_argv

    assert parse_serve_args(["--model_base_path=/m"])[0].rest_max_connection_age_ms == 0  # TF Serving's: never
    assert parse_gateway_args(["--ray_address=auto"]).options.rest_max_connection_age_ms == 0
    options, _ = parse_serve_args(["--model_base_path=/m", "--rest_api_port=8501", "--rest_max_connection_age_ms=30000"])
    assert options.rest_max_connection_age_ms == 30000
    argv = gateway_argv(options, "auto", 9000, 9001)
    assert argv[3] == "gateway"
    assert parse_gateway_args(argv[4:]).options.rest_max_connection_age_ms == 30000
    for parse in (lambda: parse_serve_args(["--model_base_path=/m", "--rest_max_connection_age_ms=-1"]),
                  lambda: parse_gateway_args(["--ray_address=auto", "--rest_max_connection_age_ms=-1"])):
        with pytest.raises(SystemExit) as exit_info:
            parse()
        assert exit_info.value.code == 2


def test_gateway_prefaulted_heap_bytes_is_off_by_default_and_reaches_every_gateway_process() -> None:
    from cluster.gateway.processes import gateway_argv

    options, _ = parse_serve_args(["--model_base_path=/m"])
    assert options.gateway_prefaulted_heap_bytes == 0  # no memory spent unless asked
    options, _ = parse_serve_args(["--model_base_path=/m", "--gateway_prefaulted_heap_bytes=268435456"])
    argv = gateway_argv(options, "auto", 9000, 9001)
    assert parse_gateway_args(argv[4:]).options.gateway_prefaulted_heap_bytes == 1 << 28
    for parse in (lambda: parse_serve_args(["--model_base_path=/m", "--gateway_prefaulted_heap_bytes=-1"]),
                  lambda: parse_gateway_args(["--ray_address=auto", "--gateway_prefaulted_heap_bytes=-1"])):
        with pytest.raises(SystemExit) as exit_info:
            parse()
        assert exit_info.value.code == 2
