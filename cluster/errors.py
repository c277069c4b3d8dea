"""Domain errors of the serving cluster. They carry no transport codes.

The gateway holds the one table that maps each class to a gRPC code and an HTTP status.
Messages follow TF Serving's wording (spec §7) where clients may match on them.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: every error the cluster raises on purpose for a request."""


class InvalidArgument(ServingError):
    """The request is malformed or does not fit the signature (INVALID_ARGUMENT)."""


class NotFound(ServingError):
    """The model, version or servable is not there (NOT_FOUND)."""


class FailedPrecondition(ServingError):
    """The request is well-formed but the state forbids it, e.g. unknown signature for Predict."""


class Unavailable(ServingError):
    """Temporarily cannot serve: replicas not ready, shutting down (UNAVAILABLE)."""


class ResourceExhausted(ServingError):
    """A queue is full: the request was shed at once rather than queued (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(ServingError):
    """The client's deadline passed before the request was computed (DEADLINE_EXCEEDED)."""


class Unimplemented(ServingError):
    """The request asks for something Tessera does not do (UNIMPLEMENTED)."""


class Internal(ServingError):
    """A bug or a broken invariant on our side (INTERNAL)."""
