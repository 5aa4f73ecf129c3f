"""What the serving path reads besides the model: shopper history and hot item features (from
the feature store), and the live catalog (availability, categories) read on every request so a
deleted or unavailable item disappears at once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import Q

from core.catalog.models import Item
from core.events.models import Event
from core.features import selectors as features

from .ranking import Candidate


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    weight: float


# How many of the most recent history items seed the co-occurrence fallback.
NEIGHBOUR_SEEDS = 5

# Items a request carries as the session's recent history count as clicks.
SESSION_WEIGHT = settings.EVENT_TYPE_WEIGHTS.get("click", 2.0)


def user_history(user_id: str) -> list[HistoryEntry]:
    """The shopper's recent interactions, oldest first, from the feature store."""
    return [
        HistoryEntry(entry.item_id, entry.weight)
        for entry in features.user_history(
            user_id=user_id, limit=settings.RECOMMENDATIONS_HISTORY_LENGTH
        )
    ]


def items_not_to_repeat(user_id: str) -> set[str]:
    """Items the shopper did something with that means "don't show again" (by default: bought)."""
    types = settings.RECOMMENDATIONS_EXCLUDE_EVENT_TYPES
    if not user_id or not types:
        return set()
    rows = (
        Event.objects.filter(user__external_id=user_id, type__in=types, item__isnull=False)
        .values_list("item__external_id", flat=True)
        .distinct()
    )
    return set(rows[:10_000])


def recommendable_categories(item_ids: Iterable[str]) -> dict[str, str]:
    """External id -> category path of those items that may be shown (in the catalog, available)."""
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        return {}
    if connection.vendor == "postgresql":
        # One array parameter instead of an IN list of ~200: the ORM's per-value preparation and
        # the driver's parsing of 200 placeholders cost more than the query (every request).
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT external_id, category FROM {Item._meta.db_table} "  # noqa: S608
                "WHERE external_id = ANY(%s) AND deleted_at IS NULL AND available",
                [ids],
            )
            return dict(cursor.fetchall())
    rows = Item.objects.filter(
        external_id__in=ids, deleted_at__isnull=True, available=True
    ).values_list("external_id", "category")
    return dict(rows)


def item_exists(item_id: str) -> bool:
    return Item.objects.filter(external_id=item_id, deleted_at__isnull=True).exists()


def category_exists(category: str) -> bool:
    return Item.objects.filter(
        Q(category=category) | Q(category__startswith=category + "/"), deleted_at__isnull=True
    ).exists()


def popular_items(*, category: str | None, window: str | None, limit: int) -> list[Candidate]:
    return [
        Candidate(scored.item_id, scored.score)
        for scored in features.item_popular(window=window or "all", category=category, count=limit)
    ]


def neighbour_items(item_ids: Sequence[str], *, limit: int) -> list[Candidate]:
    """Co-occurrence neighbours of the last few given items (the most recent weighs most),
    the given items removed."""
    recent = list(dict.fromkeys(reversed(item_ids)))[:NEIGHBOUR_SEEDS]
    scores: dict[str, float] = {}
    for position, seed in enumerate(recent):
        decay = 0.5**position
        for scored in features.item_neighbours(item_id=seed, count=limit):
            scores[scored.item_id] = scores.get(scored.item_id, 0.0) + decay * scored.score
    for seed in item_ids:
        scores.pop(seed, None)
    ranked = sorted(scores.items(), key=lambda pair: pair[1], reverse=True)[:limit]
    return [Candidate(item_id, score) for item_id, score in ranked]
