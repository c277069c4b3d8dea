"""Imports every kernel module, which registers its ops. Add new op modules here."""

from exporter.ops import core, math  # noqa: F401
