"""OpenAPI shapes of POST /events, for the schema only (validation is in bulk, validation.py)."""

from rest_framework import serializers

from core.catalog.schema import RowError


class Event(serializers.Serializer):
    event_id = serializers.CharField(max_length=128, help_text="Idempotency key: reuse on retry.")
    user_id = serializers.CharField(max_length=255)
    item_id = serializers.CharField(max_length=255)
    type = serializers.CharField(
        help_text="view, click, add_to_cart, remove_from_cart, purchase, rating, or a type from "
        "EVENTS_EXTRA_TYPES"
    )
    value = serializers.FloatField(required=False, help_text="Rating, quantity or revenue.")
    timestamp = serializers.DateTimeField(
        required=False, help_text="ISO 8601 or epoch seconds; default: now; at most 24 h ahead."
    )
    session_id = serializers.CharField(required=False, max_length=128)
    recommendation_id = serializers.CharField(required=False, max_length=64)
    context = serializers.DictField(required=False, help_text="At most 4 KiB serialized.")  # type: ignore[assignment]


class EventBatch(serializers.Serializer):
    events = Event(many=True)


class IngestResult(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    errors = RowError(many=True)  # type: ignore[assignment]  # a declared field, not .errors
