from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelAutoscaling(_message.Message):
    __slots__ = ("name", "min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s", "scale_to_zero_idle_s", "own_hosts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ONGOING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    DOWNSCALE_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_TO_ZERO_IDLE_S_FIELD_NUMBER: _ClassVar[int]
    OWN_HOSTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    upscale_delay_s: float
    downscale_delay_s: float
    scale_to_zero_idle_s: float
    own_hosts: bool
    def __init__(self, name: _Optional[str] = ..., min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_ongoing_requests: _Optional[float] = ..., upscale_delay_s: _Optional[float] = ..., downscale_delay_s: _Optional[float] = ..., scale_to_zero_idle_s: _Optional[float] = ..., own_hosts: _Optional[bool] = ...) -> None: ...

class AutoscalingConfig(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _containers.RepeatedCompositeFieldContainer[ModelAutoscaling]
    def __init__(self, model: _Optional[_Iterable[_Union[ModelAutoscaling, _Mapping]]] = ...) -> None: ...
