from django.contrib import admin
from django.http import HttpRequest

from .models import Impression


@admin.register(Impression)
class ImpressionAdmin(admin.ModelAdmin):
    """Served lists, read-only: what each shopper was shown, by which model."""

    list_display = [
        "recommendation_id",
        "page",
        "surface",
        "user_external_id",
        "model_version",
        "source",
        "created_at",
    ]
    list_filter = ["surface", "source", "model_version"]
    search_fields = ["recommendation_id", "user_external_id"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
