"""What the feature jobs compute from events, in PostgreSQL (the source of truth).

Redis holds a hot copy for serving (see `hotstore.py`); `manage.py rebuild_features` rewrites it
from these tables and the events table. Ids are ours (`catalog.User.id`, `catalog.Item.id`), with
no database constraint: the feature tables are written in bulk and outlive nothing they refer to
(a forgotten shopper's rows are erased explicitly).
"""

from __future__ import annotations

from django.db import models


class Watermark(models.Model):
    """How far one consumer of the event stream has got: every event with id <= `last_event_id`
    is counted in its tables, exactly once. Advanced in the same transaction as the tables."""

    consumer = models.CharField(max_length=32, primary_key=True)
    last_event_id = models.BigIntegerField(default=0)
    # PostgreSQL hands out ids before commit, so a later id can become visible first. The
    # lowest missing id seen past the watermark, and since when it has been missing.
    gap_event_id = models.BigIntegerField(null=True, blank=True)
    gap_seen_at = models.DateTimeField(null=True, blank=True)
    # The catalog sync's position (consumer "catalog"): items updated since then are re-read.
    synced_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.consumer} @ {self.last_event_id}"


class JobRun(models.Model):
    """One run of a feature job, for the admin: what it did, how long, how far behind."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"  # another run held the consumer's lock until the wait ran out
        ABANDONED = "abandoned"  # its worker died (kill -9, OOM); a later run took over

    consumer = models.CharField(max_length=32)
    trigger = models.CharField(max_length=32, help_text="on_commit, sweep, command, rebuild")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    batches = models.PositiveIntegerField(default=0)
    events_processed = models.BigIntegerField(default=0)
    watermark_from = models.BigIntegerField(null=True, blank=True)
    watermark_to = models.BigIntegerField(null=True, blank=True)
    max_event_age_seconds = models.FloatField(
        null=True, blank=True, help_text="Longest wait of a processed event: commit - ingested."
    )
    backlog_events = models.BigIntegerField(
        null=True, blank=True, help_text="Highest event id minus the watermark when it finished."
    )
    error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["-started_at"], name="features_jobrun_started_idx")]

    def __str__(self) -> str:
        return f"{self.consumer} {self.trigger} {self.status} @ {self.started_at:%H:%M:%S}"


class UserFeatures(models.Model):
    """Counts of one shopper's events per type and their weighted sum. The recent sequence is
    read from the events table (index on user, timestamp) and kept hot in Redis."""

    user_id = models.BigIntegerField(primary_key=True)
    counts = models.JSONField(default=dict)
    weight_sum = models.FloatField(default=0.0)
    last_event_at = models.FloatField(default=0.0, help_text="Unix time of the latest event.")
    last_event_id = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "user features"

    def __str__(self) -> str:
        return f"user {self.user_id}"


class ItemFeatures(models.Model):
    """Popularity (weighted count, all time), trending scores (exponentially decayed weighted
    counts, half-life 1 h / 24 h / 7 d, valued at `trend_ref`) and counts per event type."""

    item_id = models.BigIntegerField(primary_key=True)
    counts = models.JSONField(default=dict)
    popularity = models.FloatField(default=0.0)
    trend_1h = models.FloatField(default=0.0)
    trend_24h = models.FloatField(default=0.0)
    trend_7d = models.FloatField(default=0.0)
    trend_ref = models.FloatField(default=0.0, help_text="Unix time the trend values are at.")
    last_event_id = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "item features"
        indexes = [models.Index(fields=["-popularity"], name="features_item_popularity_idx")]

    def __str__(self) -> str:
        return f"item {self.item_id}"


class ItemPair(models.Model):
    """How often two items were interacted with together by one shopper (`kind` view or buy).
    One row per unordered pair: `item_id` < `other_id`."""

    pk = models.CompositePrimaryKey("kind", "item_id", "other_id")
    kind = models.CharField(max_length=8)
    item_id = models.BigIntegerField()
    other_id = models.BigIntegerField()
    count = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"{self.kind} {self.item_id}-{self.other_id}: {self.count:g}"


class ItemNeighbours(models.Model):
    """The top-K co-occurring items of one item: `neighbours` is [[other item id, count], ...],
    best first. Counts only grow, so merging the old top-K with the pairs a batch changed is
    exact."""

    pk = models.CompositePrimaryKey("kind", "item_id")
    kind = models.CharField(max_length=8)
    item_id = models.BigIntegerField()
    neighbours = models.JSONField(default=list)
    last_event_id = models.BigIntegerField(default=0, help_text="Last batch that changed it.")

    def __str__(self) -> str:
        return f"{self.kind} neighbours of {self.item_id}"


class NeighbourContext(models.Model):
    """The last few distinct items of one shopper per kind, that the next interaction pairs
    with. Kept in the database so a re-run pairs exactly as the first run would have."""

    pk = models.CompositePrimaryKey("kind", "user_id")
    kind = models.CharField(max_length=8)
    user_id = models.BigIntegerField()
    recent = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"{self.kind} context of {self.user_id}"
