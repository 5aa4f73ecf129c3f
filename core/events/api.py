"""POST /api/v1/events: one event or a batch. Validation is in bulk (validation.py), storage is one
transaction (services.events_ingest)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.system import scopes
from core.system.exceptions import PayloadTooLarge
from core.system.metrics import observe_ingest

from . import schema
from .services import events_ingest
from .validation import EventValidator


class EventsRejected(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "No event in the request is valid."
    default_code = "invalid_events"

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__()
        self.detail = answer  # keep numbers numbers (DRF would turn them into strings)

    def get_codes(self) -> str:
        return self.default_code


def _raw_events(data: Any) -> list[Any]:
    """A single event object, a list of events, or {"events": [...]} -> list."""
    if isinstance(data, list):
        raw = data
    elif isinstance(data, dict) and "events" in data and len(data) == 1:
        raw = data["events"]
        if not isinstance(raw, list):
            raise exceptions.ValidationError({"events": ["must be a list of event objects"]})
    elif isinstance(data, dict):
        raw = [data]
    else:
        raise exceptions.ValidationError(
            {"non_field_errors": ["expected an event object, a list of them, or {'events': [...]}"]}
        )
    if not raw:
        raise exceptions.ValidationError({"events": ["the batch is empty"]})
    limit = settings.EVENTS_MAX_BATCH
    if len(raw) > limit:
        raise PayloadTooLarge(f"A batch holds at most {limit} events; got {len(raw)}.")
    return raw


class EventCreateApi(APIView):
    """202: every valid event is committed (counted as accepted or duplicate); invalid ones are
    listed by index under `errors` and leave no trace. 400 when none is valid."""

    required_scope = scopes.EVENTS_WRITE

    @extend_schema(
        operation_id="events_create",
        request=PolymorphicProxySerializer(
            component_name="EventsBody",
            serializers=[schema.Event, schema.Event(many=True), schema.EventBatch],
            resource_type_field_name=None,
            many=False,  # lets the list form (Event(many=True)) into the schema
        ),
        responses={202: schema.IngestResult},
        description='One event, a list of up to 10,000, or {"events": [...]}. 202: every valid '
        "event is committed, exactly once per event_id. 400 when none is valid; 413 over the "
        "batch or body limit.",
    )
    def post(self, request: Request) -> Response:
        raw = _raw_events(request.data)
        valid, errors = EventValidator().validate(raw)
        result = events_ingest(events=valid)
        result.errors = sorted(errors + result.errors, key=lambda error: error.index)
        answer = result.as_dict()
        observe_ingest(
            accepted=answer["accepted"],
            duplicates=answer["duplicates"],
            rejected=answer["rejected"],
        )
        if result.accepted == 0 and result.duplicates == 0:
            raise EventsRejected(answer)
        return Response(answer, status=status.HTTP_202_ACCEPTED)
