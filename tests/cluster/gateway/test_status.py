"""The one error -> status table (spec §5.6) and TF's message truncation."""

from __future__ import annotations

import grpc
import pytest

from cluster import errors
from cluster.gateway import status
from exporter.errors import BundleError, InvalidInputError


class _SubclassedNotFound(errors.NotFound):
    pass


@pytest.mark.parametrize(
    ("exc", "code", "http"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND, 404),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION, 400),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE, 503),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED, 501),
        (errors.Internal("x"), grpc.StatusCode.INTERNAL, 500),
        (InvalidInputError("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (BundleError("x"), grpc.StatusCode.DATA_LOSS, 500),
        (_SubclassedNotFound("x"), grpc.StatusCode.NOT_FOUND, 404),
        (KeyError("x"), grpc.StatusCode.INTERNAL, 500),
        (errors.ServingError("x"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_codes_and_http_statuses(exc: BaseException, code: grpc.StatusCode, http: int) -> None:
    result = status.status_of(exc)
    assert result.code is code
    assert result.http_status == http
    assert result.error_code == code.value[0]


def test_every_grpc_code_has_an_http_status_and_tf_number() -> None:
    for code in grpc.StatusCode:
        assert code in status.HTTP_STATUS
    assert status.tf_error_code(grpc.StatusCode.NOT_FOUND) == 5
    assert status.tf_error_code(grpc.StatusCode.UNAUTHENTICATED) == 16
    assert status.HTTP_STATUS[grpc.StatusCode.CANCELLED] == 499


def test_message_is_kept_up_to_1024_chars_then_truncated() -> None:
    exact = "a" * 1024
    assert status.status_of(errors.InvalidArgument(exact)).message == exact
    long = "b" * 1024 + "tail"
    assert status.status_of(errors.InvalidArgument(long)).message == "b" * 1024 + "...TRUNCATED"


def test_unexpected_exception_keeps_its_message() -> None:
    result = status.status_of(ZeroDivisionError("division by zero"))
    assert (result.code, result.message) == (grpc.StatusCode.INTERNAL, "division by zero")


def test_code_for_kind() -> None:
    assert status.code_for_kind(None) is grpc.StatusCode.OK
    assert status.code_for_kind("NotFound") is grpc.StatusCode.NOT_FOUND
    assert status.code_for_kind("BundleError") is grpc.StatusCode.DATA_LOSS
    assert status.code_for_kind("InvalidInputError") is grpc.StatusCode.INVALID_ARGUMENT
    assert status.code_for_kind("RuntimeError") is grpc.StatusCode.INTERNAL
