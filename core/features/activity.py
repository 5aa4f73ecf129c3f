"""The "activity" consumer: per-shopper counts and recent sequence, per-item popularity, trends
and conversion counts. Folding a batch is a handful of statements whatever its size."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import connection

from . import hotstore
from .bulk import epoch_sql, fetch_by_ids, is_postgresql, upsert
from .models import ItemFeatures, UserFeatures
from .pipeline import EventRow, events_fetch

_RATES = {window: hotstore.decay_rate(window) for window in hotstore.WINDOWS}
_TREND_COLUMNS = {"1h": "trend_1h", "24h": "trend_24h", "7d": "trend_7d"}


@dataclass
class UserState:
    counts: dict[str, int] = field(default_factory=dict)
    weight_sum: float = 0.0
    last_event_at: float = 0.0
    last_event_id: int = 0


@dataclass
class ItemState:
    counts: dict[str, int] = field(default_factory=dict)
    popularity: float = 0.0
    trends: dict[str, float] = field(default_factory=lambda: dict.fromkeys(hotstore.WINDOWS, 0.0))
    trend_ref: float = 0.0
    last_event_id: int = 0


@dataclass
class Outcome:
    rows: list[EventRow]
    users: dict[int, UserState]
    items: dict[int, ItemState]
    new_users: set[int]


def _fold(rows: list[EventRow]) -> tuple[dict[int, UserState], dict[int, ItemState]]:
    """What `rows` add, per user and per item (trends valued at each item's latest event)."""
    weights = settings.EVENT_TYPE_WEIGHTS
    users: dict[int, UserState] = {}
    items: dict[int, ItemState] = {}
    rates = list(_RATES.items())
    for event_id, user_id, item_id, kind, at, _ in rows:
        weight = weights.get(kind, 0.0)
        user = users.get(user_id)
        if user is None:
            user = users[user_id] = UserState()
        user.counts[kind] = user.counts.get(kind, 0) + 1
        user.weight_sum += weight
        user.last_event_at = max(user.last_event_at, at)
        user.last_event_id = event_id
        if item_id is None:
            continue
        item = items.get(item_id)
        if item is None:
            item = items[item_id] = ItemState(trend_ref=at)
        item.counts[kind] = item.counts.get(kind, 0) + 1
        item.popularity += weight
        item.last_event_id = event_id
        trends = item.trends
        if at > item.trend_ref:
            for window, rate in rates:
                trends[window] = trends[window] * math.exp(-(at - item.trend_ref) * rate) + weight
            item.trend_ref = at
        else:
            for window, rate in rates:
                trends[window] += weight * math.exp(-(item.trend_ref - at) * rate)
    return users, items


def _add_counts(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    merged = dict(old)
    for kind, count in new.items():
        merged[kind] = merged.get(kind, 0) + count
    return merged


def _merge_trends(old: ItemState, new: ItemState) -> None:
    """`new` += `old`, both decayed to the later reference time."""
    ref = max(old.trend_ref, new.trend_ref)
    for window, rate in _RATES.items():
        new.trends[window] = old.trends[window] * math.exp(-(ref - old.trend_ref) * rate) + (
            new.trends[window] * math.exp(-(ref - new.trend_ref) * rate)
        )
    new.trend_ref = ref


def _load(table: str, ids: Iterable[int], columns: list[str]) -> dict[int, tuple]:
    loads = orjson.loads
    found = {}
    for row in fetch_by_ids(table, table_key(table), columns, ids):
        counts = row[1]
        if isinstance(counts, str | bytes):  # SQLite returns JSON as text
            counts = loads(counts)
        found[row[0]] = (counts, *row[2:])
    return found


def table_key(table: str) -> str:
    return "user_id" if table == UserFeatures._meta.db_table else "item_id"


def users_load(ids: Iterable[int]) -> dict[int, UserState]:
    rows = _load(
        UserFeatures._meta.db_table, ids, ["counts", "weight_sum", "last_event_at", "last_event_id"]
    )
    return {pk: UserState(*values) for pk, values in rows.items()}


def items_load(ids: Iterable[int]) -> dict[int, ItemState]:
    rows = _load(
        ItemFeatures._meta.db_table,
        ids,
        ["counts", "popularity", "trend_1h", "trend_24h", "trend_7d", "trend_ref", "last_event_id"],
    )
    return {
        pk: ItemState(
            counts=counts,
            popularity=popularity,
            trends={"1h": t1, "24h": t24, "7d": t7},
            trend_ref=ref,
            last_event_id=last,
        )
        for pk, (counts, popularity, t1, t24, t7, ref, last) in rows.items()
    }


class ActivityConsumer:
    name = "activity"

    def apply(self, rows: list[EventRow]) -> Outcome:
        users, items = _fold(rows)
        old_users = users_load(users)
        for pk, state in users.items():
            old = old_users.get(pk)
            if old is not None:
                state.counts = _add_counts(old.counts, state.counts)
                state.weight_sum += old.weight_sum
                state.last_event_at = max(state.last_event_at, old.last_event_at)
        old_items = items_load(items)
        for pk, state in items.items():
            old = old_items.get(pk)
            if old is not None:
                state.counts = _add_counts(old.counts, state.counts)
                state.popularity += old.popularity
                _merge_trends(old, state)
        dumps = orjson.dumps
        upsert(
            UserFeatures._meta.db_table,
            [
                ("user_id", "bigint"),
                ("counts", "jsonb"),
                ("weight_sum", "float8"),
                ("last_event_at", "float8"),
                ("last_event_id", "bigint"),
            ],
            ["user_id"],
            [
                (pk, dumps(s.counts).decode(), s.weight_sum, s.last_event_at, s.last_event_id)
                for pk, s in sorted(users.items())
            ],
        )
        upsert(
            ItemFeatures._meta.db_table,
            [
                ("item_id", "bigint"),
                ("counts", "jsonb"),
                ("popularity", "float8"),
                ("trend_1h", "float8"),
                ("trend_24h", "float8"),
                ("trend_7d", "float8"),
                ("trend_ref", "float8"),
                ("last_event_id", "bigint"),
            ],
            ["item_id"],
            [
                (
                    pk,
                    dumps(s.counts).decode(),
                    s.popularity,
                    s.trends["1h"],
                    s.trends["24h"],
                    s.trends["7d"],
                    s.trend_ref,
                    s.last_event_id,
                )
                for pk, s in sorted(items.items())
            ],
        )
        return Outcome(rows=rows, users=users, items=items, new_users=set(users) - set(old_users))

    def publish(self, store: redis.Redis, outcome: Outcome) -> None:
        _publish(store, outcome)

    def republish(self, store: redis.Redis, after: int, upto: int) -> None:
        size = settings.FEATURES_BATCH_SIZE
        while after < upto:
            rows = events_fetch(after, size, upto)
            if not rows:
                break
            user_ids = {row[1] for row in rows}
            item_ids = {row[2] for row in rows if row[2] is not None}
            users = users_load(user_ids)
            # Rows of a forgotten shopper are gone: nothing to publish for them.
            _publish(
                store,
                Outcome(rows=rows, users=users, items=items_load(item_ids), new_users=set()),
            )
            after = rows[-1][0]

    def rebuild_hot(self, store: redis.Redis) -> None:
        for pattern in ("feat:u:*", "feat:i:*", "feat:z:*"):
            hotstore.delete_matching(store, pattern)
        chunk = 10_000
        last = 0
        while True:
            ids = list(
                UserFeatures.objects.filter(user_id__gt=last)
                .order_by("user_id")
                .values_list("user_id", flat=True)[:chunk]
            )
            if not ids:
                break
            _publish(store, Outcome(rows=[], users=users_load(ids), items={}, new_users=set()))
            last = ids[-1]
        last = 0
        while True:
            ids = list(
                ItemFeatures.objects.filter(item_id__gt=last)
                .order_by("item_id")
                .values_list("item_id", flat=True)[:chunk]
            )
            if not ids:
                break
            _publish(store, Outcome(rows=[], users={}, items=items_load(ids), new_users=set()))
            last = ids[-1]

    def reset(self) -> None:
        UserFeatures.objects.all().delete()
        ItemFeatures.objects.all().delete()


def external_ids(table: str, ids: Iterable[int]) -> dict[int, str]:
    return {pk: ext for pk, ext in fetch_by_ids(table, "id", ["external_id"], ids)}


def items_catalog(ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """item id -> (external id, category)."""
    return {
        pk: (ext, category)
        for pk, ext, category in fetch_by_ids(
            "catalog_item", "id", ["external_id", "category"], ids
        )
    }


def histories_from_events(user_ids: list[int], length: int) -> dict[int, list[list[Any]]]:
    """The last `length` events of each shopper from the events table (the source of truth of
    the sequence): user id -> [[event id, item external id, type, unix time], ...] oldest first."""
    if not user_ids:
        return {}
    epoch = epoch_sql("e.timestamp")
    histories: dict[int, list[list[Any]]] = {pk: [] for pk in user_ids}
    with connection.cursor() as cursor:
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            if is_postgresql():
                cursor.execute(
                    f"SELECT u.id, h.id, i.external_id, h.type, h.at FROM unnest(%s::bigint[]) "  # noqa: S608
                    f"AS u(id) CROSS JOIN LATERAL (SELECT e.id, e.item_id, e.type, {epoch} AS at "
                    "FROM events_event e WHERE e.user_id = u.id AND e.item_id IS NOT NULL "
                    "ORDER BY e.timestamp DESC, e.id DESC LIMIT %s) h "
                    "JOIN catalog_item i ON i.id = h.item_id",
                    [chunk, length],
                )
            else:
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(
                    f"SELECT user_id, id, external_id, type, at FROM ("  # noqa: S608
                    f"SELECT e.user_id, e.id, i.external_id, e.type, {epoch} AS at, "
                    "ROW_NUMBER() OVER (PARTITION BY e.user_id "
                    "ORDER BY e.timestamp DESC, e.id DESC) AS rank FROM events_event e "
                    "JOIN catalog_item i ON i.id = e.item_id "
                    f"WHERE e.user_id IN ({marks})) WHERE rank <= %s",
                    [*chunk, length],
                )
            for user_id, event_id, item_ext, kind, at in cursor.fetchall():
                histories[user_id].append([event_id, item_ext, kind, at])
    for entries in histories.values():
        entries.sort(key=lambda entry: (entry[3], entry[0]))
    return histories


def history_merge(old: list[list[Any]], new: list[list[Any]], length: int) -> list[list[Any]]:
    """Union by event id, oldest first, the last `length`. Idempotent: merging twice is once."""
    seen = {entry[0] for entry in old}
    merged = old + [entry for entry in new if entry[0] not in seen]
    merged.sort(key=_entry_order)
    return merged[-length:]


def user_blob(state: UserState, history: list[list[Any]]) -> dict[str, Any]:
    return {
        "v": state.last_event_id,
        "c": state.counts,
        "w": state.weight_sum,
        "t": state.last_event_at,
        "h": history,
    }


def item_blob(state: ItemState) -> dict[str, Any]:
    return {
        "c": state.counts,
        "p": state.popularity,
        **{f"t{window}": value for window, value in state.trends.items()},
        "r": state.trend_ref,
    }


def _publish(store: redis.Redis, outcome: Outcome) -> None:
    length = settings.FEATURES_HISTORY_LENGTH
    dumps, loads = orjson.dumps, orjson.loads
    item_ids = set(outcome.items) | {row[2] for row in outcome.rows if row[2] is not None}
    catalog = items_catalog(item_ids)
    commands: list[tuple] = []
    if outcome.users:
        user_ids = sorted(outcome.users)
        user_ext = external_ids("catalog_user", user_ids)
        user_ids = [pk for pk in user_ids if pk in user_ext]
        fresh: dict[int, list[list[Any]]] = {}
        for event_id, user_id, item_id, kind, at, _ in outcome.rows:
            if item_id is not None and item_id in catalog and user_id in user_ext:
                fresh.setdefault(user_id, []).append([event_id, catalog[item_id][0], kind, at])
        keys = [hotstore.user_key(user_ext[pk]) for pk in user_ids]
        current = store.mget(keys) if keys else []
        missing = [
            pk
            for pk, raw in zip(user_ids, current, strict=True)
            if raw is None and pk not in outcome.new_users
        ]
        from_events = histories_from_events(missing, length)
        for pk, key, raw in zip(user_ids, keys, current, strict=True):
            if raw is not None:
                history = history_merge(loads(raw)["h"], fresh.get(pk, []), length)
            elif pk in from_events:
                history = history_merge(from_events[pk], fresh.get(pk, []), length)
            else:
                history = history_merge([], fresh.get(pk, []), length)
            commands.append(("set", key, dumps(user_blob(outcome.users[pk], history))))
    for pk, state in outcome.items.items():
        if pk not in catalog:
            continue
        ext, category = catalog[pk]
        commands.append(("set", hotstore.item_key(ext), dumps(item_blob(state))))
        scores = {"all": state.popularity}
        for window, value in state.trends.items():
            scores[window] = hotstore.log_trend(value, state.trend_ref, window)
        for window, score in scores.items():
            commands.append(("zadd", hotstore.zset_key(window), {ext: score}))
            for prefix in hotstore.category_prefixes(category):
                commands.append(("zadd", hotstore.zset_key(window, prefix), {ext: score}))
    hotstore.run_pipeline(store, commands)


def _entry_order(entry: list[Any]) -> tuple[float, int]:
    return (entry[3], entry[0])
