"""API exceptions beyond DRF's own. Kept apart from the handler (which imports DRF's views)."""

from rest_framework import exceptions, status


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Service temporarily unavailable."
    default_code = "service_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (down, restarting, connection lost): nothing can be read
    or committed, so the honest answer is 503 and a retry, not a 500 that reads as a bug."""

    default_detail = "The database is unavailable; retry shortly."
    default_code = "database_unavailable"
    wait = 2  # DRF's handler sends it as Retry-After
