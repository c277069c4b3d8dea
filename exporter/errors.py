"""Errors raised by the exporter and the runtime. They carry no transport codes.

The serving cluster maps them to gRPC codes and HTTP statuses in one table in its gateway.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base class of every error the exporter raises on purpose."""


class GraphError(ExporterError):
    """The graph is invalid: unknown op, bad wiring, dtype mismatch. The message names the node."""


class InvalidInputError(ExporterError):
    """A request's inputs do not fit the signature or an op refused them (bad dtype, shape, value).

    The serving cluster answers INVALID_ARGUMENT with this message.
    """


class BundleError(ExporterError):
    """A bundle on storage is incomplete, corrupt, or not a bundle."""


class ExportError(ExporterError):
    """Exporting failed (a bad receiver, output or storage target)."""
