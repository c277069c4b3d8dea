"""--autoscaling_config_file: text tessera.AutoscalingConfig -> per-model overrides, refused when wrong."""

from __future__ import annotations

import pathlib

import pytest

from cluster.config import ModelAutoscaling
from cluster.errors import InvalidArgument
from cluster.flags.serve import parse_serve_args
from cluster.gateway.autoscaling_config import autoscaling_from_text
from cluster.gateway.config_converters import server_config_from_text


def test_parses_models_and_leaves_unset_fields_to_the_flags():
    text = """
      # hot scales out, cold stays put
      model { name: "hot" min_replicas: 1 max_replicas: 8 target_ongoing_requests: 2.5 }
      model { name: "cold" max_replicas: 1 upscale_delay_s: 0 downscale_delay_s: 120 }
      model { name: "big" own_hosts: true }
    """
    assert autoscaling_from_text(text) == {
        "hot": ModelAutoscaling(min_replicas=1, max_replicas=8, target_ongoing_requests=2.5),
        "cold": ModelAutoscaling(max_replicas=1, upscale_delay_s=0.0, downscale_delay_s=120.0),
        "big": ModelAutoscaling(own_hosts=True),
    }
    assert autoscaling_from_text("") == {}


def test_min_replicas_0_scales_to_zero_after_its_idle_period():
    text = 'model { name: "rare" min_replicas: 0 max_replicas: 2 scale_to_zero_idle_s: 600 }'
    assert autoscaling_from_text(text) == {
        "rare": ModelAutoscaling(min_replicas=0, max_replicas=2, scale_to_zero_idle_s=600.0)
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model { min_replicas: 1 }', "needs a name"),
        ('model { name: "m" } model { name: "m" }', "more than once"),
        ('model { name: "m" scale_to_zero_idle_s: -5 }', "must not be negative"),
        ('model { name: "m" max_replicas: 0 }', "at least 1"),
        ('model { name: "m" min_replicas: 3 max_replicas: 2 }', "below min_replicas"),
        ('model { name: "m" target_ongoing_requests: 0 }', "positive"),
        ('model { name: "m" target_ongoing_requests: inf }', "positive"),
        ('model { name: "m" downscale_delay_s: -1 }', "must not be negative"),
        ('model { name: "m" max_replica: 2 }', "Invalid AutoscalingConfig text"),
        ('config { name: "m" base_path: "/m" }', "Invalid AutoscalingConfig text"),
    ],
)
def test_refuses_bad_configs_with_a_clear_message(text: str, message: str):
    with pytest.raises(InvalidArgument, match=message):
        autoscaling_from_text(text)


def test_the_flag_reads_the_file_and_the_model_config_stays_tf_servings(tmp_path: pathlib.Path):
    models = tmp_path / "models.config"
    models.write_text('model_config_list { config { name: "hot" base_path: "/m/hot" model_platform: "tensorflow" } }')
    scaling = tmp_path / "autoscaling.config"
    scaling.write_text('model { name: "hot" max_replicas: 4 }')
    options, config = parse_serve_args([
        f"--model_config_file={models}", f"--autoscaling_config_file={scaling}", "--max_replicas=2",
    ])
    assert options.model_autoscaling == {"hot": ModelAutoscaling(max_replicas=4)}
    assert options.max_replicas == 2  # still every other model's default
    assert config == server_config_from_text(models.read_text())  # the TF Serving file, untouched


def test_a_bad_file_ends_the_process_with_a_usage_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]):
    scaling = tmp_path / "autoscaling.config"
    scaling.write_text('model { name: "m" max_replicas: 0 }')
    with pytest.raises(SystemExit) as exit_info:
        parse_serve_args(["--model_base_path=/m", f"--autoscaling_config_file={scaling}"])
    assert exit_info.value.code == 2
    assert "max_replicas must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_serve_args(["--model_base_path=/m", f"--autoscaling_config_file={tmp_path / 'missing'}"])
