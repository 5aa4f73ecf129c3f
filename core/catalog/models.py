from __future__ import annotations

from django.db import models


class Item(models.Model):
    """Something the shop sells. `external_id` is the storefront's id; `id` is ours (compact, used
    by events, features and models). A deleted item keeps its row (events still refer to it) but is
    out of the catalog and out of every recommendation (`deleted_at` set)."""

    external_id = models.CharField(max_length=255, unique=True)
    title = models.CharField(max_length=500, blank=True, default="")
    # Category path from the root, '/'-separated ("shoes/running/trail"); filters match a subtree.
    category = models.CharField(max_length=500, blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    available = models.BooleanField(default=True)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Prefix (subtree) filters: category LIKE 'a/b/%'.
            models.Index(
                fields=["category"],
                name="catalog_item_category_idx",
                opclasses=["text_pattern_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.title or self.external_id


class User(models.Model):
    """A shopper, by the storefront's id. Deleting one forgets them (see `user_forget`)."""

    external_id = models.CharField(max_length=255, unique=True)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name = "shopper"

    def __str__(self) -> str:
        return self.external_id
