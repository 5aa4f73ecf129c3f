"""One error shape for every 4xx/5xx: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .exceptions import DatabaseUnavailable
from .request_id import current_request_id

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": current_request_id(),
        }
    }


def _code_and_message(exc: exceptions.APIException) -> tuple[str, str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        return "invalid", "Invalid input.", exc.detail
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else exc.default_code
    detail = exc.detail
    message = str(detail) if not isinstance(detail, (dict, list)) else str(exc.default_detail)
    details = detail if isinstance(detail, (dict, list)) else None
    return str(code), message, details


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, _DATABASE_DOWN):
        exc = _database_unavailable(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's handler500 answers in the same shape
    assert isinstance(exc, exceptions.APIException)
    code, message, details = _code_and_message(exc)
    response.data = error_body(code, message, details)
    return response


def _database_down_errors() -> tuple[type[Exception], ...]:
    # Django wraps driver errors in its own classes, but code that uses the driver's cursor (the
    # COPY path of event ingestion) meets psycopg's own: both mean the same here.
    try:
        import psycopg
    except ImportError:  # SQLite only
        return (OperationalError, InterfaceError)
    return (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


_DATABASE_DOWN = _database_down_errors()


def _database_unavailable(exc: Exception) -> DatabaseUnavailable:
    logger.warning("database unavailable: %s", (str(exc).strip() or repr(exc)).splitlines()[0])
    return DatabaseUnavailable()


def _wants_json(request: HttpRequest) -> bool:
    return not request.path.startswith("/admin/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if not _wants_json(request):
        from django.views.defaults import page_not_found

        return page_not_found(request, exception)  # type: ignore[arg-type,return-value]
    return JsonResponse(error_body("not_found", f"No route for {request.path}."), status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    exc = sys.exc_info()[1]  # handler500 runs inside Django's `except` for the request
    if isinstance(exc, _DATABASE_DOWN):  # outside DRF's views (middleware, plain views)
        unavailable = _database_unavailable(exc)
        response = JsonResponse(
            error_body(unavailable.default_code, str(unavailable.detail)), status=503
        )
        response["Retry-After"] = str(unavailable.wait)
        return response
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)
