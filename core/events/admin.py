from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property

from .models import Event

# A filtered list counts at most this many matching rows (then shows that many).
COUNT_CAP = 10_000


class EstimatedCountPaginator(Paginator):
    """Events grow to billions of rows: a COUNT(*) would scan them all. Unfiltered on PostgreSQL,
    use the planner's estimate; filtered, count at most COUNT_CAP + 1 rows."""

    @cached_property
    def count(self) -> int:
        query = self.object_list.query  # type: ignore[attr-defined]
        if connection.vendor == "postgresql" and not query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT COALESCE(SUM(c.reltuples), 0)::bigint FROM pg_class c "
                    "JOIN pg_inherits i ON i.inhrelid = c.oid "
                    "WHERE i.inhparent = 'events_event'::regclass AND c.reltuples > 0"
                )
                row = cursor.fetchone()
                return int(row[0]) if row else 0
        return self.object_list.order_by()[: COUNT_CAP + 1].count()  # type: ignore[attr-defined]


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: events are written by the API and import_events only."""

    list_display = ["id", "timestamp", "type", "user", "item", "value", "event_id"]
    list_filter = ["type", ("timestamp", admin.DateFieldListFilter)]
    search_fields = ["=event_id", "=session_id", "=recommendation_id"]
    list_select_related = ["user", "item"]
    date_hierarchy = None
    ordering = ["-id"]
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 100

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
