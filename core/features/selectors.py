"""Feature reads for serving: Redis first, the database when Redis is absent, down, or lost its
data (a missing `feat:wm:*` marker); a user read that misses fills Redis back from the database.

All ids here are the storefront's (external) ids. Times are Unix seconds (float).

    user_history(*, user_id, limit=None) -> list[HistoryEntry]          most recent last
    user_features(*, user_id) -> UserFeaturesView | None
    item_features(*, item_id) -> ItemFeaturesView | None
    item_popular(*, window="all", category=None, count=20, offset=0,
                 exclude_unavailable=True) -> list[ScoredItem]          best first
    item_neighbours(*, item_id, kind="view", count=20,
                    exclude_unavailable=True) -> list[ScoredItem]       best first
    item_unavailable_ids() -> frozenset[str]
    item_unavailable_among(item_ids) -> set[str]                        the cheap per-request filter
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q

from core.catalog.models import Item, User

from . import hotstore
from .activity import histories_from_events, history_commands, item_blob, user_blob, users_load
from .activity import history_parse as hotstore_history
from .activity import items_load as _items_load
from .models import ItemFeatures, ItemNeighbours

WINDOW_CHOICES = hotstore.ZSET_WINDOWS  # "all", "1h", "24h", "7d"
KIND_CHOICES = ("view", "buy")
_REBUILD_PENDING_KEY = "features:rebuild-pending"


@dataclass(frozen=True)
class HistoryEntry:
    item_id: str
    type: str
    weight: float
    timestamp: float
    event_id: int


@dataclass(frozen=True)
class UserFeaturesView:
    user_id: str
    counts: dict[str, int]
    weight_sum: float
    last_event_at: float
    history: list[HistoryEntry]
    # The version of the hot set of unavailable items at this read (None: not read from Redis):
    # flags read from the set may be reused while it stays the same.
    unavailable_version: int | None = None
    # The values of the caller's `also` keys, read in the same round trip (empty when the
    # features were not read from Redis).
    also: tuple[bytes | None, ...] = ()


@dataclass(frozen=True)
class ItemFeaturesView:
    item_id: str
    counts: dict[str, int]
    popularity: float
    trending: dict[str, float]  # window -> decayed weighted count now
    conversion_rate: float | None  # purchases / views
    cart_rate: float | None  # add_to_cart / views


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float


def _store() -> redis.Redis | None:
    return hotstore.client("serve")


def _request_rebuild() -> None:
    """Redis lost the features: ask a worker to rebuild them (once per minute at most)."""
    try:
        if cache.add(_REBUILD_PENDING_KEY, 1, timeout=60):
            from .services import enqueue_now
            from .tasks import features_rebuild_task

            enqueue_now(features_rebuild_task)
    except Exception:  # noqa: S110 (the next job run rebuilds anyway)
        pass


# Users -------------------------------------------------------------------------------------------


def _entries(history: list[list[Any]]) -> list[HistoryEntry]:
    weights = settings.EVENT_TYPE_WEIGHTS
    return [
        HistoryEntry(
            item_id=item, type=kind, weight=weights.get(kind, 0.0), timestamp=at, event_id=eid
        )
        for eid, item, kind, at in history
    ]


def _user_blob(user_id: str, also: Sequence[str] = ()) -> dict[str, Any] | None:
    """{"c", "w", "t", "v", "h": [[event id, item, type, time], ...] oldest first} or None;
    with "also": the raw values of the keys `also`, read in the same round trip."""
    store = _store()
    key, history_key = hotstore.user_key(user_id), hotstore.history_key(user_id)
    if store is not None:
        try:
            # Two commands, not one GET per key: each command costs redis-py more than Redis.
            pipe = store.pipeline(transaction=False)
            pipe.mget([key, hotstore.UNAVAILABLE_VERSION, *also])
            pipe.zrange(history_key, 0, -1, withscores=True)
            (raw, version, *extras), members = pipe.execute()
            if raw is not None:
                blob = orjson.loads(raw)
                blob["h"] = [hotstore_history(member, score) for member, score in members]
                blob["uv"] = int(version) if version is not None else None
                blob["also"] = tuple(extras)
                return blob
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
            store = None
    pk = User.objects.filter(external_id=user_id).values_list("id", flat=True).first()
    if pk is None:
        return None
    state = users_load([pk]).get(pk)
    if state is None:
        return None
    length = settings.FEATURES_HISTORY_LENGTH
    history = histories_from_events([pk], length)[pk]
    blob = user_blob(state)
    if store is not None:
        try:
            # NX: a job writing a newer value meanwhile wins; the history ZADD is idempotent.
            commands: list[tuple] = [("set", key, orjson.dumps(blob), None, None, True)]
            if history:
                total = sum(state.counts.values())
                commands += history_commands(history_key, history, total, length)
            hotstore.run_pipeline(store, commands)
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    return {**blob, "h": history}


def user_history(*, user_id: str, limit: int | None = None) -> list[HistoryEntry]:
    """The shopper's last `limit` (default FEATURES_HISTORY_LENGTH) interactions with items,
    most recent last; [] for an unknown shopper."""
    blob = _user_blob(user_id)
    if blob is None:
        return []
    history = blob["h"]
    if limit is not None:
        history = history[-limit:] if limit > 0 else []
    return _entries(history)


def user_features(*, user_id: str, also: Sequence[str] = ()) -> UserFeaturesView | None:
    """The shopper's features; `also`: other keys of the feature store's Redis to read in the
    same round trip (a caller whose own data lives there), their raw values in `.also`."""
    blob = _user_blob(user_id, also)
    if blob is None:
        return None
    return UserFeaturesView(
        user_id=user_id,
        counts=blob["c"],
        weight_sum=blob["w"],
        last_event_at=blob["t"],
        history=_entries(blob["h"]),
        unavailable_version=blob.get("uv"),
        also=blob.get("also", ()),
    )


# Items -------------------------------------------------------------------------------------------


def _rate(counts: dict[str, int], numerator: str) -> float | None:
    views = counts.get("view", 0)
    return counts.get(numerator, 0) / views if views else None


def item_features(*, item_id: str) -> ItemFeaturesView | None:
    blob = None
    store = _store()
    if store is not None:
        try:
            raw = store.get(hotstore.item_key(item_id))
            blob = orjson.loads(raw) if raw is not None else None
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    if blob is None:
        pk = Item.objects.filter(external_id=item_id).values_list("id", flat=True).first()
        state = _items_load([pk]).get(pk) if pk is not None else None
        if state is None:
            return None
        blob = item_blob(state)
    now = time.time()
    trending = {
        window: blob[f"t{window}"]
        * math.exp(-max(0.0, now - blob["r"]) * hotstore.decay_rate(window))
        for window in hotstore.WINDOWS
    }
    return ItemFeaturesView(
        item_id=item_id,
        counts=blob["c"],
        popularity=blob["p"],
        trending=trending,
        conversion_rate=_rate(blob["c"], "purchase"),
        cart_rate=_rate(blob["c"], "add_to_cart"),
    )


def item_popular(
    *,
    window: str = "all",
    category: str | None = None,
    count: int = 20,
    offset: int = 0,
    exclude_unavailable: bool = True,
) -> list[ScoredItem]:
    """Most popular items, best first. `window` "all": weighted count of all events; "1h",
    "24h", "7d": trending (weighted count decayed with that half-life; the score is the value
    now). `category` matches that node and its subtree."""
    if window not in WINDOW_CHOICES:
        raise ValueError(f"window must be one of {', '.join(WINDOW_CHOICES)}")
    category = category.strip("/") or None if category else None
    store = _store()
    if store is not None:
        try:
            found = _popular_from_redis(store, window, category, count, offset, exclude_unavailable)
            if found is not None:
                return found
            _request_rebuild()
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    return _popular_from_db(window, category, count, offset, exclude_unavailable)


def _score(window: str, raw: float, now: float) -> float:
    return raw if window == "all" else hotstore.trend_now(raw, window, now)


def _popular_from_redis(
    store: redis.Redis,
    window: str,
    category: str | None,
    count: int,
    offset: int,
    exclude_unavailable: bool,
) -> list[ScoredItem] | None:
    key = hotstore.zset_key(window, category)
    wanted = offset + count
    fetch = wanted * 2 + 16 if exclude_unavailable else wanted
    now = time.time()
    while True:
        pipe = store.pipeline(transaction=False)
        pipe.exists(hotstore.marker_key("items"))
        pipe.zrevrange(key, 0, fetch - 1, withscores=True)
        ready, members = pipe.execute()
        if not ready:
            return None
        ids = [member.decode() for member, _ in members]
        out = _unavailable_among_redis(store, ids) if exclude_unavailable else set()
        if out is None:
            return None
        kept = [
            ScoredItem(item_id=ext, score=_score(window, score, now))
            for ext, (_, score) in zip(ids, members, strict=True)
            if ext not in out
        ]
        if len(kept) >= wanted or len(members) < fetch:
            return kept[offset:wanted]
        fetch *= 4


def _recommendable(category: str | None, exclude_unavailable: bool) -> Any:
    items = Item.objects.all()
    if exclude_unavailable:
        items = items.filter(deleted_at__isnull=True, available=True)
    if category:
        items = items.filter(Q(category=category) | Q(category__startswith=category + "/"))
    return items


def _popular_from_db(
    window: str, category: str | None, count: int, offset: int, exclude_unavailable: bool
) -> list[ScoredItem]:
    items = _recommendable(category, exclude_unavailable)
    if window == "all":
        rows = list(
            ItemFeatures.objects.filter(item_id__in=items.values("id"))
            .order_by("-popularity", "item_id")
            .values_list("item_id", "popularity")[offset : offset + count]
        )
    else:
        # No index orders a decayed value; fine as a fallback on a catalog-sized table.
        column = f"trend_{window}"
        scored = [
            (pk, hotstore.log_trend(value, ref, window))
            for pk, value, ref in ItemFeatures.objects.filter(
                item_id__in=items.values("id")
            ).values_list("item_id", column, "trend_ref")
        ]
        scored.sort(key=lambda pair: (-pair[1], pair[0]))
        now = time.time()
        rows = [
            (pk, hotstore.trend_now(score, window, now))
            for pk, score in scored[offset : offset + count]
        ]
    ext = dict(Item.objects.filter(id__in=[pk for pk, _ in rows]).values_list("id", "external_id"))
    return [ScoredItem(item_id=ext[pk], score=score) for pk, score in rows if pk in ext]


def item_neighbours(
    *, item_id: str, kind: str = "view", count: int = 20, exclude_unavailable: bool = True
) -> list[ScoredItem]:
    """Items most often interacted with together with `item_id` ("view": viewed together,
    "buy": bought together), best first; score = co-occurrence count."""
    if kind not in KIND_CHOICES:
        raise ValueError(f"kind must be one of {', '.join(KIND_CHOICES)}")
    top: list[list[Any]] | None = None
    store = _store()
    if store is not None:
        try:
            pipe = store.pipeline(transaction=False)
            pipe.exists(hotstore.marker_key("neighbours"))
            pipe.get(hotstore.neighbours_key(kind, item_id))
            ready, raw = pipe.execute()
            if ready:
                top = orjson.loads(raw) if raw is not None else []
            else:
                _request_rebuild()
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    if top is None:
        top = _neighbours_from_db(item_id, kind)
    if exclude_unavailable and top:
        out = item_unavailable_among([ext for ext, _ in top])
        top = [pair for pair in top if pair[0] not in out]
    return [ScoredItem(item_id=ext, score=score) for ext, score in top[:count]]


def _neighbours_from_db(item_id: str, kind: str) -> list[list[Any]]:
    pk = Item.objects.filter(external_id=item_id).values_list("id", flat=True).first()
    if pk is None:
        return []
    row = ItemNeighbours.objects.filter(kind=kind, item_id=pk).values_list("neighbours", flat=True)
    top = row.first() or []
    ext = dict(
        Item.objects.filter(id__in=[other for other, _ in top]).values_list("id", "external_id")
    )
    return [[ext[other], score] for other, score in top if other in ext]


# Availability ------------------------------------------------------------------------------------


def _unavailable_among_redis(store: redis.Redis, item_ids: list[str]) -> set[str] | None:
    if not item_ids:
        return set()
    pipe = store.pipeline(transaction=False)
    pipe.exists(hotstore.marker_key("catalog"))
    pipe.smismember(hotstore.UNAVAILABLE, item_ids)
    ready, flags = pipe.execute()
    if not ready:
        return None
    return {ext for ext, flag in zip(item_ids, flags, strict=True) if flag}


def _unavailable_from_db(item_ids: Iterable[str] | None = None) -> set[str]:
    items = Item.objects.filter(Q(deleted_at__isnull=False) | Q(available=False))
    if item_ids is not None:
        items = items.filter(external_id__in=list(item_ids))
    return set(items.values_list("external_id", flat=True))


def item_unavailable_among(item_ids: Collection[str]) -> set[str]:
    """Which of `item_ids` are deleted or unavailable (one round trip to Redis)."""
    ids = list(item_ids)
    store = _store()
    if store is not None:
        try:
            found = _unavailable_among_redis(store, ids)
            if found is not None:
                return found
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    return _unavailable_from_db(ids)


def item_unavailable_ids() -> frozenset[str]:
    """External ids of every deleted or unavailable item."""
    store = _store()
    if store is not None:
        try:
            pipe = store.pipeline(transaction=False)
            pipe.exists(hotstore.marker_key("catalog"))
            pipe.smembers(hotstore.UNAVAILABLE)
            ready, members = pipe.execute()
            if ready:
                return frozenset(member.decode() for member in members)
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
    return frozenset(_unavailable_from_db())
