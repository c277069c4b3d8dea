"""The one table from domain errors to gRPC status codes and HTTP statuses (spec §5.6).

gRPC codes and TensorFlow's `tensorflow.error.Code` share their numbers, so one `grpc.StatusCode`
serves the gRPC status, the `StatusProto.error_code` of ModelService replies and, through
`HTTP_STATUS`, the REST status. Anything that is not one of our errors is a bug: INTERNAL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import grpc

from cluster import errors
from exporter.errors import BundleError, GraphError, InvalidInputError

MAX_MESSAGE_CHARS: Final = 1024
TRUNCATED_SUFFIX: Final = "...TRUNCATED"

# Looked up along the exception's MRO, so subclasses inherit their parent's code.
_CODES: Final[dict[type[BaseException], grpc.StatusCode]] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    # Request data the runtime refused (bad dtype, shape, value): the client's fault.
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    # Seen in GetModelStatus for a version that failed to load: a graph that does not validate is
    # a bad argument to the loader; a corrupt or incomplete bundle is corrupt data on storage.
    GraphError: grpc.StatusCode.INVALID_ARGUMENT,
    BundleError: grpc.StatusCode.DATA_LOSS,
}
_CODES_BY_NAME: Final[dict[str, grpc.StatusCode]] = {cls.__name__: code for cls, code in _CODES.items()}

HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


@dataclass(frozen=True, slots=True)
class Status:
    """How an error is reported: the gRPC code, the (truncated) message and the HTTP status."""

    code: grpc.StatusCode
    message: str

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    @property
    def error_code(self) -> int:
        """The `tensorflow.error.Code` number (equal to the gRPC code number)."""
        return tf_error_code(self.code)


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code for an exception: the table entry of its nearest mapped class, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def status_of(exc: BaseException) -> Status:
    """The status a request that failed with `exc` answers with (message truncated as TF does)."""
    return Status(code_of(exc), truncate(str(exc)))


def code_for_kind(kind: str | None) -> grpc.StatusCode:
    """The code for `VersionStatus.error_kind` (an error class name); unknown names are INTERNAL.
    "OK" is a note on a healthy version (e.g. a model scaled to zero), not an error."""
    if kind is None or kind == "OK":
        return grpc.StatusCode.OK
    return _CODES_BY_NAME.get(kind, grpc.StatusCode.INTERNAL)


def tf_error_code(code: grpc.StatusCode) -> int:
    """`tensorflow.error.Code` number of a gRPC code: the numbers are the same by design."""
    return int(code.value[0])


def truncate(message: str) -> str:
    """TF Serving keeps the first 1024 characters of a long error message and marks the cut."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + TRUNCATED_SUFFIX


_SERVER_FAULTS: Final = frozenset({
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE,
})


def log_failure(logger: logging.Logger, where: str, exc: BaseException, status: Status, request_id: str | None) -> None:
    """One error line, with the request id, for failures that are ours; nothing for the client's.

    Bugs (an exception that is not one of our errors) get their traceback.
    """
    if status.code not in _SERVER_FAULTS:
        return
    bug = not isinstance(exc, errors.ServingError)
    logger.error("%s failed: %s: %s [request_id=%s]", where, status.code.name, status.message, request_id,
                 exc_info=exc if bug else None)
