"""OpenAPI shapes of the catalog API, for the schema only: requests are validated in bulk by
validation.py, answers are built by api.py (a serializer per row would cost more than the work)."""

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers


class ItemBody(serializers.Serializer):
    id = serializers.CharField(required=False, help_text="In a batch; from the URL in a PUT.")
    title = serializers.CharField(required=False, max_length=500)
    category = serializers.CharField(
        required=False, help_text="Path from the root, 'a/b/c' (or a list of names)."
    )
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)
    price = serializers.DecimalField(
        max_digits=12, decimal_places=2, required=False, allow_null=True
    )
    available = serializers.BooleanField(required=False, default=True)
    attributes = serializers.DictField(required=False, help_text="Free-form, bounded size.")


class Item(ItemBody):
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ItemPage(serializers.Serializer):
    results = Item(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class UserBody(serializers.Serializer):
    id = serializers.CharField(required=False, help_text="In a batch; from the URL in a PUT.")
    attributes = serializers.DictField(required=False)


class User(UserBody):
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class UserPage(serializers.Serializer):
    results = User(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class RowError(serializers.Serializer):
    index = serializers.IntegerField()
    field = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    message = serializers.CharField()


class BatchResult(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    rejected = serializers.IntegerField()
    errors = RowError(many=True)  # type: ignore[assignment]  # a declared field, not .errors


class ForgetReport(serializers.Serializer):
    id = serializers.CharField()
    removed = serializers.DictField(
        child=serializers.IntegerField(), help_text="Rows removed, by kind: user, events, ..."
    )


PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="next_cursor of the previous page"),
    OpenApiParameter("limit", int, description="1 to 1000, default 100"),
]
