"""One error shape for every 4xx/5xx: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

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
    response = exception_handler(exc, context)
    if response is None:
        return None  # unexpected: Django's handler500 answers in the same shape
    assert isinstance(exc, exceptions.APIException)
    code, message, details = _code_and_message(exc)
    response.data = error_body(code, message, details)
    return response


def _wants_json(request: HttpRequest) -> bool:
    return not request.path.startswith("/admin/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if not _wants_json(request):
        from django.views.defaults import page_not_found

        return page_not_found(request, exception)  # type: ignore[arg-type,return-value]
    return JsonResponse(error_body("not_found", f"No route for {request.path}."), status=404)


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)
