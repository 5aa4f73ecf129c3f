from __future__ import annotations

from django.db import models

from core.catalog.models import Item, User


class Event(models.Model):
    """One thing a shopper did. Append-only.

    On PostgreSQL the table is partitioned by month of `timestamp` (see migration 0001 and
    `partitions.py`); its primary key there is (id, timestamp), which Django does not need to know.
    `user` and `item` carry no database constraint: inserts stay cheap, and history outlives a
    deleted item. `id` grows with arrival, so the feature jobs read "after watermark" by id.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=128, help_text="The client's idempotency key.")
    user = models.ForeignKey(
        User, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    item = models.ForeignKey(
        Item,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
        null=True,
        blank=True,
    )
    # NULL, not "": absent in an append-only table of billions of rows.
    session_id = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    type = models.CharField(max_length=32)
    value = models.FloatField(null=True, blank=True)
    timestamp = models.DateTimeField()
    ingested_at = models.DateTimeField()
    recommendation_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    context = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [
            # A shopper's history (features, right to be forgotten).
            models.Index(fields=["user", "timestamp"], name="events_event_user_ts_idx"),
            # Time windows: partition pruning, then on PostgreSQL a BRIN index on timestamp (see
            # migration 0002: a fraction of a B-tree's insert cost; events arrive in time order).
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.user_id}->{self.item_id} @ {self.timestamp:%Y-%m-%d %H:%M}"


class EventKey(models.Model):
    """Idempotency keys of stored events. A separate table because a unique index on a partitioned
    table must contain the partition key, and a retry need not repeat the timestamp. Keys older than
    EVENTS_DEDUP_DAYS are pruned."""

    event_id = models.CharField(max_length=128, primary_key=True)
    received_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.event_id
