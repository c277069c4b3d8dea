"""Imports every kernel module, which registers its ops. Add new op modules here."""

import exporter.ops.categorical  # noqa: F401
import exporter.ops.embedding  # noqa: F401
import exporter.ops.extra  # noqa: F401
import exporter.ops.onnx  # noqa: F401
import exporter.ops.parsing  # noqa: F401
from exporter.ops import core, math  # noqa: F401
