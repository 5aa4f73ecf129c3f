"""CORS for the storefront origins in CORS_ALLOWED_ORIGINS, on /api/v1/ only.

Storefront pages call the API with `Authorization: Bearer <key>` and JSON bodies, so a browser
sends a preflight first. An allowed origin gets its preflight answered here (before
authentication, which a preflight never carries) and its responses marked readable. Any other
origin gets no CORS header at all, so the browser keeps the response from the page. No cookies are
involved, hence no Allow-Credentials.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

API_PREFIX = "/api/v1/"
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "X-Request-ID, Retry-After"
PREFLIGHT_MAX_AGE_SECONDS = 600


class CorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        allowed: list[str] = settings.CORS_ALLOWED_ORIGINS
        if not allowed or not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        origin = request.headers.get("Origin", "")
        origin_allowed = origin.lower() in allowed
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in (
            request.headers
        )
        if preflight and origin_allowed:
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            response["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_SECONDS)
        else:
            response = self.get_response(request)
        if origin_allowed:
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        # The answer depends on Origin: shared caches must not hand one origin's to another.
        patch_vary_headers(response, ("Origin",))
        return response
