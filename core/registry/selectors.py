from __future__ import annotations

import time
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from core.recommendations.ranking import ActiveRule, RuleKind

from .models import BusinessRule

# Rules are read on every recommendation; an admin's change is in force within this many seconds.
RULES_TTL_SECONDS = 2.0
_rules_cache: tuple[float, list[ActiveRule]] | None = None


def business_rules_active(
    *, now: datetime | None = None, use_cache: bool = True
) -> list[ActiveRule]:
    global _rules_cache
    if use_cache and now is None and _rules_cache and _rules_cache[0] > time.monotonic():
        return _rules_cache[1]
    moment = now or timezone.now()
    rows = BusinessRule.objects.filter(
        Q(starts_at__isnull=True) | Q(starts_at__lte=moment),
        Q(ends_at__isnull=True) | Q(ends_at__gt=moment),
        enabled=True,
    )
    rules = [
        ActiveRule(
            kind=RuleKind(row.kind),
            item_ids=frozenset(row.item_ids),
            category=row.category,
            factor=row.factor,
            position=row.position,
        )
        for row in rows
    ]
    if now is None:
        _rules_cache = (time.monotonic() + RULES_TTL_SECONDS, rules)
    return rules


def business_rules_cache_clear() -> None:
    """Make the next read see the database (after an edit in this process; tests)."""
    global _rules_cache
    _rules_cache = None
