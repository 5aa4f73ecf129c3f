from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from .request_id import current_request_id, reset_request_id, set_request_id


class RequestIdMiddleware:
    """Takes X-Request-ID from the caller (or makes one), echoes it, and tags every log line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.meta_key = "HTTP_" + settings.REQUEST_ID_HEADER.upper().replace("-", "_")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = set_request_id(request.META.get(self.meta_key))
        try:
            response = self.get_response(request)
            response[settings.REQUEST_ID_HEADER] = current_request_id()
            return response
        finally:
            reset_request_id(token)
