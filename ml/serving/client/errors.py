"""What a call to the model server can raise: one transient type for fallbacks, loud ones else.

    try:
        result = client.recommend(history, weights, k=20, timeout=budget.remaining())
    except ModelServerUnavailable:     # down, slow, or circuit open: serve a fallback
        ...
    # ModelNotFound, ModelServerError: a wrong registry entry or a bug; let it be seen

`ModelServerUnavailable` and `ModelNotFound` are both `ModelServerError`s, so catch the narrow ones
first.
"""

from __future__ import annotations

import grpc


class ModelServerError(Exception):
    """The model server refused the call: INVALID_ARGUMENT, FAILED_PRECONDITION, INTERNAL, ...

    `code` is the gRPC status (None when the client itself found the answer malformed) and
    `message` the server's details, e.g. `Serving signature key "x" not found.`.
    """

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(f"{code.name if code else 'BAD_RESPONSE'}: {message}")
        self.code = code
        self.message = message


class ModelServerUnavailable(ModelServerError):
    """Transient: UNAVAILABLE (after one retry), DEADLINE_EXCEEDED, or the circuit is open.

    Callers answer from a fallback; the next call may succeed.
    """


class CircuitOpen(ModelServerUnavailable):
    """Not even tried: recent calls failed transiently, so the client fails fast for a while."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


class ModelNotFound(ModelServerError):
    """NOT_FOUND: the model, version or label target is not loaded on the server."""


class ModelResponseError(ModelServerError):
    """The server answered, but not with the model contract (missing output, shapes disagree)."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def error_from_status(code: grpc.StatusCode, message: str) -> ModelServerError:
    if code in TRANSIENT_CODES:
        return ModelServerUnavailable(code, message)
    if code is grpc.StatusCode.NOT_FOUND:
        return ModelNotFound(code, message)
    return ModelServerError(code, message)
