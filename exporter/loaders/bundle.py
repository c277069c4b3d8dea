"""The loader of Tessera bundles (`MANIFEST.pb`, `graph.pb`, `variables/`): the numpy graph runtime."""

from __future__ import annotations

from exporter import bundle as bundle_io
from exporter.runtime import Runtime
from exporter.servable import LoadOptions


def load(path: str, options: LoadOptions) -> Runtime:
    """Reads and verifies the bundle at `path` and plans its graph (see `exporter.servable`)."""
    return Runtime.from_bundle(bundle_io.read_bundle(path, cache_dir=options.cache_dir))
