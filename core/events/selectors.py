"""Event reads. `events_after` is the feature pipeline's incremental read."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from .models import Event

# Ids are taken at insert and become visible at commit, so a later id can commit before an
# earlier one. Reading only events ingested at least this long ago lets in-flight batches land
# first (an ingest transaction lasts well under a second).
DEFAULT_SETTLE = timedelta(seconds=5)


def events_after(
    *,
    after_id: int,
    limit: int = 10_000,
    settle: timedelta = DEFAULT_SETTLE,
    now: datetime | None = None,
) -> QuerySet[Event]:
    """Events with id > `after_id`, in id order, at most `limit`: advance the watermark to the
    last id returned. Served by the (id, timestamp) primary key of each partition."""
    cutoff = (now or timezone.now()) - settle
    return Event.objects.filter(id__gt=after_id, ingested_at__lte=cutoff).order_by("id")[:limit]


def events_between(*, start: datetime, end: datetime) -> QuerySet[Event]:
    """Events with start <= timestamp < end: only the partitions of those months are read."""
    return Event.objects.filter(timestamp__gte=start, timestamp__lt=end)


def user_events(*, user_id: int, since: datetime | None = None) -> QuerySet[Event]:
    """One shopper's events, newest first (index on user, timestamp)."""
    queryset = Event.objects.filter(user_id=user_id)
    if since is not None:
        queryset = queryset.filter(timestamp__gte=since)
    return queryset.order_by("-timestamp")
