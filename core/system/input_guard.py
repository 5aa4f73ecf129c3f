"""Refuses NUL characters in API paths and query strings with a 400 in the error shape.

PostgreSQL text cannot hold NUL, so an id like `a%00b` reaching a query raised a DataError (a 500)
on every lookup by id. No id, name or parameter of this API contains one: refusing them at the
door is simpler and surer than guarding every lookup. JSON bodies get the same rule in the parser.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from .errors import error_body

API_PREFIX = "/api/v1/"


class RejectNulMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            query = request.META.get("QUERY_STRING", "")
            if "\x00" in request.path or "%00" in query or "\x00" in query:
                return JsonResponse(
                    error_body("invalid", "NUL characters are not accepted in the URL."),
                    status=400,
                )
        return self.get_response(request)
