"""A loader for the tests: wraps the bundle runtime so that it hides `example_features`, as a
runtime without a parsing receiver to bypass would (an ONNX model behind a parsing wrapper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from exporter.servable import LoadOptions, load_servable
from exporter.signature import Signature, Tensors


class PlainServable:
    def __init__(self, path: str, options: LoadOptions) -> None:
        self._inner = load_servable("tensorflow", path, options)
        self.calls = 0

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._inner.signatures

    def run(self, signature_key: str, feeds: Mapping[str, object],
            output_filter: Sequence[str] | None = None) -> Tensors:
        return self._inner.run(signature_key, feeds, output_filter)

    @property
    def resident_bytes(self) -> int:
        return self._inner.resident_bytes

    @property
    def assets_extra_dir(self) -> None:
        return None

    def close(self) -> None:
        self._inner.close()


def load(path: str, options: LoadOptions) -> PlainServable:
    return PlainServable(path, options)
