from django.contrib import admin

from .models import ItemFeatures, JobRun, UserFeatures, Watermark


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    """Every run of a feature job: what it processed and how far behind it was."""

    list_display = [
        "id",
        "consumer",
        "trigger",
        "status",
        "started_at",
        "finished_at",
        "batches",
        "events_processed",
        "watermark_to",
        "max_event_age_seconds",
        "backlog_events",
    ]
    list_filter = ["consumer", "status", "trigger"]
    ordering = ["-started_at"]
    show_full_result_count = False
    list_per_page = 100

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Watermark)
class WatermarkAdmin(admin.ModelAdmin):
    list_display = ["consumer", "last_event_id", "gap_event_id", "gap_seen_at", "synced_at"]
    list_display_links = None

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UserFeatures)
class UserFeaturesAdmin(admin.ModelAdmin):
    list_display = ["user_id", "weight_sum", "counts", "last_event_id"]
    search_fields = ["=user_id"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ItemFeatures)
class ItemFeaturesAdmin(admin.ModelAdmin):
    list_display = ["item_id", "popularity", "trend_1h", "trend_24h", "trend_7d", "counts"]
    search_fields = ["=item_id"]
    ordering = ["-popularity"]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
