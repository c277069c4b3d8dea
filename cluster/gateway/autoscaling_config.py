"""`--autoscaling_config_file` (text-format `tessera.AutoscalingConfig`) <-> `ModelAutoscaling`.

Per-model replica bounds and targets live in a file of their own, beside TF Serving's
`--model_config_file`, because TF Serving's ModelConfig has no such fields and that file must stay
valid for TF Serving as it is. Unset fields keep the flags' values (see protos/tessera/autoscaling.proto).
"""

from __future__ import annotations

import math

from google.protobuf import text_format

from cluster.config import ModelAutoscaling
from cluster.errors import InvalidArgument
from protos.tessera import autoscaling_pb2


def autoscaling_from_proto(message: autoscaling_pb2.AutoscalingConfig) -> dict[str, ModelAutoscaling]:
    """Model name -> its overrides; refuses unnamed or repeated models and out-of-range values."""
    models: dict[str, ModelAutoscaling] = {}
    for entry in message.model:
        if not entry.name:
            raise InvalidArgument("AutoscalingConfig: every model needs a name")
        if entry.name in models:
            raise InvalidArgument(f"AutoscalingConfig: model {entry.name} is listed more than once")

        def get(field: str, entry: autoscaling_pb2.ModelAutoscaling = entry) -> float | None:
            return getattr(entry, field) if entry.HasField(field) else None

        low, high, target = get("min_replicas"), get("max_replicas"), get("target_ongoing_requests")
        where = f"AutoscalingConfig for model {entry.name}"
        if high is not None and high < 1:
            raise InvalidArgument(f"{where}: max_replicas must be at least 1")
        if low is not None and high is not None and high < low:
            raise InvalidArgument(f"{where}: max_replicas ({high}) is below min_replicas ({low})")
        if target is not None and not (target > 0 and math.isfinite(target)):
            raise InvalidArgument(f"{where}: target_ongoing_requests must be positive, got {target}")
        for field in ("upscale_delay_s", "downscale_delay_s", "scale_to_zero_idle_s"):
            value = get(field)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise InvalidArgument(f"{where}: {field} must not be negative, got {value}")
        models[entry.name] = ModelAutoscaling(
            min_replicas=None if low is None else int(low),
            max_replicas=None if high is None else int(high),
            target_ongoing_requests=target,
            upscale_delay_s=get("upscale_delay_s"),
            downscale_delay_s=get("downscale_delay_s"),
            scale_to_zero_idle_s=get("scale_to_zero_idle_s"),
            own_hosts=bool(entry.own_hosts),
        )
    return models


def autoscaling_from_text(text: str) -> dict[str, ModelAutoscaling]:
    """A text-format AutoscalingConfig (the `--autoscaling_config_file` format)."""
    message = autoscaling_pb2.AutoscalingConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"Invalid AutoscalingConfig text: {exc}") from exc
    return autoscaling_from_proto(message)
