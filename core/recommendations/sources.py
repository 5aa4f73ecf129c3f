"""What the serving path reads besides the model: the shopper's history and what not to show
them again, and hot item features (from the feature store); and the catalog: availability on
every request from the feature store's hot set (kept in step by the catalog's commit hooks, so a
deleted or unavailable item disappears at once), categories from a per-process cache (a category
change shows within CATEGORY_CACHE_SECONDS)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q

from core.catalog.models import Item
from core.events.models import Event
from core.features import selectors as features

from .ranking import Candidate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    weight: float


# How many of the most recent history items seed the co-occurrence fallback.
NEIGHBOUR_SEEDS = 5

# Items a request carries as the session's recent history count as clicks.
SESSION_WEIGHT = settings.EVENT_TYPE_WEIGHTS.get("click", 2.0)


@dataclass(frozen=True)
class Shopper:
    history: list[HistoryEntry] = field(default_factory=list)  # oldest first
    not_to_repeat: set[str] = field(default_factory=set)
    # The hot set of unavailable items' version seen by the same read (recommendable_categories).
    unavailable_version: int | None = None
    # The raw values of the caller's `also` keys, when read with the features (else empty).
    also: tuple[bytes | None, ...] = ()


def shopper(user_id: str, *, also: Sequence[str] = ()) -> Shopper:
    """The shopper's recent history (at most RECOMMENDATIONS_HISTORY_LENGTH, oldest first) and
    the items not to recommend to them again, from one read of the feature store. The database
    is asked only when the stored history no longer holds every such event (a shopper with more
    purchases than the history keeps). Both follow the feature pipeline (seconds behind).
    `also`: other keys of the feature store's Redis to read in the same round trip."""
    if not user_id:
        return Shopper()
    try:
        view = features.user_features(user_id=user_id, also=also)
    except DatabaseError:  # not in the feature store, and PostgreSQL is out of reach: a newcomer
        logger.warning("shopper %r: the database is out of reach, serving them as new", user_id)
        return Shopper()
    if view is None:
        return Shopper()
    length = settings.RECOMMENDATIONS_HISTORY_LENGTH
    history = [HistoryEntry(entry.item_id, entry.weight) for entry in view.history[-length:]]
    version, extra = view.unavailable_version, view.also
    types = set(settings.RECOMMENDATIONS_EXCLUDE_EVENT_TYPES)
    if not types:
        return Shopper(history, unavailable_version=version, also=extra)
    seen = [entry.item_id for entry in view.history if entry.type in types]
    if len(seen) >= sum(view.counts.get(kind, 0) for kind in types):
        return Shopper(history, set(seen), version, extra)
    try:
        return Shopper(history, items_not_to_repeat(user_id), version, extra)
    except DatabaseError:  # the older ones cannot be read now: at least those the history holds
        logger.warning("shopper %r: the database is out of reach, older purchases unknown", user_id)
        return Shopper(history, set(seen), version, extra)


def items_not_to_repeat(user_id: str) -> set[str]:
    """Items the shopper did something with that means "don't show again" (by default: bought),
    from the database."""
    types = settings.RECOMMENDATIONS_EXCLUDE_EVENT_TYPES
    if not user_id or not types:
        return set()
    rows = (
        Event.objects.filter(user__external_id=user_id, type__in=types, item__isnull=False)
        .values_list("item__external_id", flat=True)
        .distinct()
    )
    return set(rows[:10_000])


# Item categories rarely change and are read for every candidate of every request: each web
# process keeps those it has read (None: no such item), at most _CATEGORY_CACHE_MAX, and reads
# them all again every CATEGORY_CACHE_SECONDS in a thread of its own while requests go on with
# the map they have (emptying it instead had every request of the next second or so query the
# catalog for its candidates: a stall that showed in the serving benchmark's p99).
CATEGORY_CACHE_SECONDS = 60.0
_CATEGORY_CACHE_MAX = 500_000
_categories: dict[str, str | None] = {}
_categories_until = 0.0
_categories_epoch = 0  # bumped when a refresh finds a category changed
_categories_refreshing = False
_categories_lock = threading.Lock()


def categories_cache_clear() -> None:
    global _categories, _categories_until, _categories_epoch, _shown
    with _categories_lock:
        _categories, _categories_until = {}, 0.0
        _categories_epoch += 1
        _shown = (None, {})


def _categories_refresh_start(now: float) -> None:
    global _categories_until, _categories_refreshing
    with _categories_lock:
        if _categories_refreshing or now < _categories_until:
            return
        _categories_until = now + CATEGORY_CACHE_SECONDS
        if not _categories:
            return
        _categories_refreshing = True
    threading.Thread(
        target=_categories_refresh, args=(list(_categories),), name="categories", daemon=True
    ).start()


def _categories_refresh(ids: list[str]) -> None:
    """Read the categories of `ids` again, then swap the maps (ids first seen meanwhile kept)."""
    global _categories, _categories_until, _categories_epoch, _categories_refreshing
    try:
        fresh: dict[str, str | None] = dict.fromkeys(ids)
        for start in range(0, len(ids), 10_000):
            rows = _catalog_rows(ids[start : start + 10_000])
            fresh.update({external_id: category for external_id, category, _ in rows})
        with _categories_lock:
            old = _categories
            changed = any(
                old.get(item_id, category) != category for item_id, category in fresh.items()
            )
            _categories = {**old, **fresh}
            if changed:
                _categories_epoch += 1
    except Exception:  # the database is away: keep the map, try again in a few seconds
        logger.warning("catalog: could not refresh the categories", exc_info=True)
        with _categories_lock:
            _categories_until = min(_categories_until, time.monotonic() + 5.0)
    finally:
        _categories_refreshing = False
        connection.close()  # this thread's own


def _catalog_rows(ids: list[str]) -> list[tuple[str, str, bool]]:
    """(external id, category, may be shown) of those of `ids` in the catalog."""
    if connection.vendor == "postgresql":
        # One array parameter instead of an IN list of ~200: the ORM's per-value preparation and
        # the driver's parsing of 200 placeholders cost more than the query.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT external_id, category, deleted_at IS NULL AND available "  # noqa: S608
                f"FROM {Item._meta.db_table} WHERE external_id = ANY(%s)",
                [ids],
            )
            return cursor.fetchall()
    return [
        (external_id, category, deleted_at is None and available)
        for external_id, category, deleted_at, available in Item.objects.filter(
            external_id__in=ids
        ).values_list("external_id", "category", "deleted_at", "available")
    ]


# What this process has resolved under the hot set's current version: item -> its category if it
# may be shown, None if not (unknown, deleted, unavailable). Every change of the set bumps the
# version, which starts a new map; so does a refresh of the categories that finds one changed.
_shown: tuple[tuple[int, int] | None, dict[str, str | None]] = (None, {})


def _resolve(ids: list[str]) -> dict[str, str | None]:
    """Category if shown, else None, for each of `ids`: categories from the per-process cache
    (the database for those it lacks), availability from the hot set."""
    known = _categories
    missing = [item_id for item_id in ids if item_id not in known]
    hidden: set[str] = set()
    if missing:
        try:
            rows = _catalog_rows(missing)
        except DatabaseError:  # PostgreSQL out of reach: only items this process knows are shown
            logger.warning("catalog: the database is out of reach, %d items left out", len(missing))
            hidden = set(missing)
        else:
            found = {external_id: category for external_id, category, _ in rows}
            hidden = {external_id for external_id, _, shown in rows if not shown}
            known.update({item_id: found.get(item_id) for item_id in missing})
    categories = {
        item_id: category
        for item_id in ids
        if item_id not in hidden and (category := known.get(item_id)) is not None
    }
    unavailable = features.item_unavailable_among(list(categories)) if categories else set()
    return {item_id: None if item_id in unavailable else categories.get(item_id) for item_id in ids}


def shown_version(unavailable_version: int | None) -> tuple[int, int] | None:
    """What `recommendable_categories(..., unavailable_version=...)` answers hold for: while it
    is the same, the same ids get the same answer. None when the hot set's version is unknown
    (each call then asks the database)."""
    if unavailable_version is None:
        return None
    return unavailable_version, _categories_epoch


def recommendable_categories(
    item_ids: Iterable[str], *, unavailable_version: int | None = None
) -> dict[str, str]:
    """External id -> category path of those items that may be shown (in the catalog, available).

    Availability comes from the feature store's hot set of unavailable items (the database when
    Redis is down or not yet filled); with the set's `unavailable_version` (read with the
    shopper's features), what this process resolved under the same version is reused, so a
    repeated candidate costs no round trip and a few dictionary look-ups. Items this process
    has not seen yet are read from the database, which also says whether they may be shown."""
    global _categories, _categories_until, _categories_epoch, _shown
    ids = item_ids if isinstance(item_ids, list) else list(dict.fromkeys(item_ids))
    if not ids:
        return {}
    now = time.monotonic()
    if len(_categories) > _CATEGORY_CACHE_MAX:
        with _categories_lock:
            _categories, _categories_until = {}, now + CATEGORY_CACHE_SECONDS
            _categories_epoch += 1
    elif now >= _categories_until:
        _categories_refresh_start(now)
    if unavailable_version is None:
        resolved = _resolve(ids)
        return {item_id: c for item_id in ids if (c := resolved[item_id]) is not None}
    epoch, shown = _shown
    if epoch != (unavailable_version, _categories_epoch) or len(shown) > _CATEGORY_CACHE_MAX:
        shown = {}
        _shown = ((unavailable_version, _categories_epoch), shown)
    todo = [item_id for item_id in ids if item_id not in shown]
    if todo:
        # A deleted or unavailable item is in the hot set too, and making it available again
        # changes the version: each answer holds until then.
        shown.update(_resolve(todo))
    return {item_id: c for item_id in ids if (c := shown[item_id]) is not None}


def item_exists(item_id: str) -> bool:
    try:
        return Item.objects.filter(external_id=item_id, deleted_at__isnull=True).exists()
    except DatabaseError:
        if _categories.get(item_id) is None:  # unknown to this process too: no honest answer
            raise
        return True


def category_exists(category: str) -> bool:
    try:
        return Item.objects.filter(
            Q(category=category) | Q(category__startswith=category + "/"), deleted_at__isnull=True
        ).exists()
    except DatabaseError:
        prefix = category + "/"
        if not any(
            known == category or known.startswith(prefix)
            for known in list(_categories.values())
            if known is not None
        ):
            raise
        return True


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
        # Availability is checked once for the whole list afterwards (recommendable_categories),
        # not per seed: a fallback must cost less than the model it stands in for.
        for scored in features.item_neighbours(
            item_id=seed, count=limit, exclude_unavailable=False
        ):
            scores[scored.item_id] = scores.get(scored.item_id, 0.0) + decay * scored.score
    for seed in item_ids:
        scores.pop(seed, None)
    ranked = sorted(scores.items(), key=lambda pair: pair[1], reverse=True)[:limit]
    return [Candidate(item_id, score) for item_id, score in ranked]
