"""The one error type of the model server: a gRPC code plus TF Serving's exact message."""

from __future__ import annotations

import grpc

# TF Serving cuts long messages at 1024 characters (ToGRPCStatus) and marks the cut.
MESSAGE_LIMIT = 1024
TRUNCATED_SUFFIX = "...TRUNCATED"


def truncate_message(message: str) -> str:
    if len(message) > MESSAGE_LIMIT:
        return message[:MESSAGE_LIMIT] + TRUNCATED_SUFFIX
    return message


class ServingError(Exception):
    """A request or load failure, carrying the status TF Serving would answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def error_code(self) -> int:
        """The numeric code, shared by gRPC and `tensorflow.error.Code`."""
        return int(self.code.value[0])

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def unknown(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNKNOWN, message)


def code_name(error_code: int) -> str:
    """`3` -> `INVALID_ARGUMENT`, as TF Serving's REST status prints it."""
    for code in grpc.StatusCode:
        if code.value[0] == error_code:
            return "OK" if code is grpc.StatusCode.OK else code.name
    return "UNKNOWN"
