from __future__ import annotations

from django.db import models
from django.utils import timezone


class Impression(models.Model):
    """One page of a served list: which items, in which order, from which model. Events that
    carry its `recommendation_id` are attributed to it (and so to the model version)."""

    recommendation_id = models.CharField(max_length=32, db_index=True)
    page = models.PositiveSmallIntegerField(default=1)
    surface = models.CharField(max_length=16)  # user, similar, popular, rank
    user_external_id = models.CharField(max_length=255, blank=True, default="")
    model_name = models.CharField(max_length=100, blank=True, default="")
    model_version = models.BigIntegerField(null=True, blank=True)
    source = models.CharField(max_length=40)  # model, cache, fallback:<tier>
    item_ids = models.JSONField(default=list)  # position = index + offset + 1
    offset = models.PositiveIntegerField(default=0)
    # When it was served (set on construction: the writer inserts it up to a flush later).
    created_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["recommendation_id", "page"], name="impression_list_page_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.recommendation_id} p{self.page} ({self.source})"
