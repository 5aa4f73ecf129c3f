from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from core.recommendations.ranking import RuleKind


class BusinessRule(models.Model):
    """A merchandiser's rule applied to every recommendation list while it is in force: pin an
    item to a position, boost or bury items, or exclude them, by item id and/or category subtree."""

    name = models.CharField(max_length=200)
    kind = models.CharField(
        max_length=16, choices=[(kind.value, kind.name.title()) for kind in RuleKind]
    )
    item_ids = models.JSONField(
        default=list, blank=True, help_text="Storefront item ids the rule targets."
    )
    category = models.CharField(
        max_length=500, blank=True, default="", help_text="Category subtree, e.g. 'shoes/running'."
    )
    factor = models.FloatField(default=2.0, help_text="Boost: score multiplier (> 1).")
    position = models.PositiveSmallIntegerField(default=1, help_text="Pin: 1-based position.")
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "position", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__isnull=True)
                | models.Q(starts_at__isnull=True)
                | models.Q(ends_at__gt=models.F("starts_at")),
                name="business_rule_ends_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}"

    def clean(self) -> None:
        if not isinstance(self.item_ids, list) or not all(
            isinstance(item_id, str) and item_id for item_id in self.item_ids
        ):
            raise ValidationError({"item_ids": "A list of non-empty item id strings."})
        if len(self.item_ids) > 1000:
            raise ValidationError({"item_ids": "At most 1000 items per rule."})
        if not self.item_ids and not self.category:
            raise ValidationError("Target at least one item id or a category.")
        if self.kind == RuleKind.PIN and not self.item_ids:
            raise ValidationError({"item_ids": "A pin names the items it pins."})
        if self.kind == RuleKind.BOOST and not self.factor > 1:
            raise ValidationError({"factor": "A boost multiplies scores by more than 1."})
        if self.kind == RuleKind.PIN and self.position < 1:
            raise ValidationError({"position": "Positions start at 1."})
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The end must come after the start."})
