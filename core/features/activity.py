"""The "activity" consumer (per-shopper counts and recent sequence) and the "items" consumer
(per-item popularity, trends and conversion counts). Folding a batch is a handful of statements
whatever its size."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import connection

from . import hotstore
from .bulk import epoch_sql, fetch_by_ids, is_postgresql, raw_cursor, upsert
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
    # PostgreSQL: user id -> the Redis blob as JSON, built by the upsert, instead of `users`.
    user_blobs: dict[int, str] | None = None


@dataclass
class Prepared:
    """An outcome with every database lookup done: `send` only computes and writes Redis, so it
    can run in another thread while the next batch folds."""

    rows: list[EventRow]
    users: dict[int, str]  # user id -> blob JSON
    items: dict[int, ItemState]
    user_ext: dict[int, str]
    catalog: dict[int, tuple[str, str]]  # item id -> (external id, category)
    # A rebuild (no rows): each shopper's whole recent history from the events table.
    histories: dict[int, list[list[Any]]] | None


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


# Counts: the batch's types are summed with the stored counts in the SELECT (a join on the
# stored row; callers hold the watermark lock, so nothing changes it in between), and the upsert
# only overlays them (`||`): no per-row subquery over every stored type (measured ~12 % less
# PostgreSQL CPU for the shoppers' statement).

_USERS_SQL = """
WITH w(type, weight) AS (SELECT * FROM unnest(%(types)s::text[], %(weights)s::float8[])),
per_type AS (
    SELECT e.user_id, e.type, count(*) AS n, sum(COALESCE(w.weight, 0)) AS ws,
           max(EXTRACT(EPOCH FROM e.timestamp)::float8) AS at, max(e.id) AS last_id
    FROM events_event e LEFT JOIN w ON w.type = e.type
    WHERE e.id > %(after)s AND e.id <= %(upto)s
    GROUP BY e.user_id, e.type
)
INSERT INTO features_userfeatures AS f (user_id, counts, weight_sum, last_event_at, last_event_id)
SELECT p.user_id, jsonb_object_agg(p.type, p.n + COALESCE((o.counts->>p.type)::bigint, 0)),
       sum(p.ws), max(p.at), max(p.last_id)
FROM per_type p LEFT JOIN features_userfeatures o ON o.user_id = p.user_id
GROUP BY p.user_id ORDER BY p.user_id
ON CONFLICT (user_id) DO UPDATE SET
    counts = f.counts || EXCLUDED.counts,
    weight_sum = f.weight_sum + EXCLUDED.weight_sum,
    last_event_at = GREATEST(f.last_event_at, EXCLUDED.last_event_at),
    last_event_id = GREATEST(f.last_event_id, EXCLUDED.last_event_id)
RETURNING user_id,
    json_build_object('v', f.last_event_id, 'c', f.counts, 'w', f.weight_sum, 't', f.last_event_at)
        ::text
"""


def _decay(value: str, ref: str, rate: str) -> str:
    # exp() of PostgreSQL raises on underflow: contributions older than ~1,000 half-lives are 0.
    newest = "GREATEST(f.trend_ref, EXCLUDED.trend_ref)"
    return f"{value} * exp(GREATEST(-({newest} - {ref}) * {rate}, -700))"


_ITEMS_SQL = f"""
WITH w(type, weight) AS (SELECT * FROM unnest(%(types)s::text[], %(weights)s::float8[])),
b AS (
    SELECT e.item_id, e.type, COALESCE(w.weight, 0) AS weight,
           EXTRACT(EPOCH FROM e.timestamp)::float8 AS at, e.id
    FROM events_event e LEFT JOIN w ON w.type = e.type
    WHERE e.id > %(after)s AND e.id <= %(upto)s AND e.item_id IS NOT NULL
),
refs AS (SELECT item_id, max(at) AS ref FROM b GROUP BY item_id),
counts AS (
    SELECT t.item_id,
           jsonb_object_agg(t.type, t.n + COALESCE((o.counts->>t.type)::bigint, 0)) AS counts
    FROM (SELECT item_id, type, count(*) AS n FROM b GROUP BY item_id, type) AS t
    LEFT JOIN features_itemfeatures o ON o.item_id = t.item_id
    GROUP BY t.item_id
),
agg AS (
    SELECT b.item_id, sum(b.weight) AS pop,
           sum(b.weight * exp(GREATEST(-(r.ref - b.at) * %(r1h)s, -700))) AS t1h,
           sum(b.weight * exp(GREATEST(-(r.ref - b.at) * %(r24h)s, -700))) AS t24h,
           sum(b.weight * exp(GREATEST(-(r.ref - b.at) * %(r7d)s, -700))) AS t7d,
           r.ref, max(b.id) AS last_id
    FROM b JOIN refs r USING (item_id) GROUP BY b.item_id, r.ref
)
INSERT INTO features_itemfeatures AS f
    (item_id, counts, popularity, trend_1h, trend_24h, trend_7d, trend_ref, last_event_id)
SELECT a.item_id, c.counts, a.pop, a.t1h, a.t24h, a.t7d, a.ref, a.last_id
FROM agg a JOIN counts c USING (item_id) ORDER BY a.item_id
ON CONFLICT (item_id) DO UPDATE SET
    counts = f.counts || EXCLUDED.counts,
    popularity = f.popularity + EXCLUDED.popularity,
    trend_1h = {_decay("f.trend_1h", "f.trend_ref", "%(r1h)s")}
        + {_decay("EXCLUDED.trend_1h", "EXCLUDED.trend_ref", "%(r1h)s")},
    trend_24h = {_decay("f.trend_24h", "f.trend_ref", "%(r24h)s")}
        + {_decay("EXCLUDED.trend_24h", "EXCLUDED.trend_ref", "%(r24h)s")},
    trend_7d = {_decay("f.trend_7d", "f.trend_ref", "%(r7d)s")}
        + {_decay("EXCLUDED.trend_7d", "EXCLUDED.trend_ref", "%(r7d)s")},
    trend_ref = GREATEST(f.trend_ref, EXCLUDED.trend_ref),
    last_event_id = GREATEST(f.last_event_id, EXCLUDED.last_event_id)
RETURNING item_id, counts::text, popularity, trend_1h, trend_24h, trend_7d, trend_ref,
    last_event_id
"""  # noqa: S608


def _fold_params(after: int, upto: int) -> dict[str, Any]:
    weights = settings.EVENT_TYPE_WEIGHTS
    return {
        "types": list(weights),
        "weights": list(weights.values()),
        "after": after,
        "upto": upto,
        **{f"r{window}": rate for window, rate in _RATES.items()},
    }


def _users_apply_sql(after: int, upto: int) -> dict[int, str]:
    """PostgreSQL: fold the shoppers of events (after, upto] in the server, one statement; each
    changed shopper's stored values come back as the blob Redis stores."""
    with raw_cursor() as cursor:
        cursor.execute(_USERS_SQL, _fold_params(after, upto))
        return dict(cursor.fetchall())


def _items_apply_sql(after: int, upto: int) -> dict[int, ItemState]:
    """PostgreSQL: fold the items of events (after, upto] in the server, one statement; the
    stored values of every changed item come back for Redis."""
    loads = orjson.loads
    with raw_cursor() as cursor:
        cursor.execute(_ITEMS_SQL, _fold_params(after, upto))
        return {
            pk: ItemState(
                counts=loads(counts),
                popularity=popularity,
                trends={"1h": t1, "24h": t24, "7d": t7},
                trend_ref=ref,
                last_event_id=last,
            )
            for pk, counts, popularity, t1, t24, t7, ref, last in cursor.fetchall()
        }


class _HotConsumer:
    """What the shoppers' and the items' consumers share: how a batch's values reach Redis."""

    def republished(self, rows: list[EventRow]) -> Outcome:
        raise NotImplementedError

    def prepare(self, outcome: Outcome) -> Prepared:
        return _prepare(outcome)

    def publish(self, store: redis.Redis, prepared: Prepared) -> None:
        _send(store, prepared)

    def republish(self, store: redis.Redis, after: int, upto: int) -> None:
        """Write the committed values of the events in (after, upto] to Redis again."""
        size = settings.FEATURES_BATCH_SIZE
        while after < upto:
            rows = events_fetch(after, size, upto)
            if not rows:
                break
            _publish(store, self.republished(rows))
            after = rows[-1][0]


class ActivityConsumer(_HotConsumer):
    """Per-shopper counts and recent sequence: the fresh path (an accepted event should be in
    its shopper's features within 2 s). Items are a consumer of their own (`ItemsConsumer`,
    its own watermark), run beside it, so a busy machine's CPU goes to the shoppers' fold first
    and the items' fold, a third of the work, does not make it wait."""

    name = "activity"

    def apply(self, rows: list[EventRow], after: int, upto: int) -> Outcome:
        if is_postgresql():
            return Outcome(rows=rows, users={}, items={}, user_blobs=_users_apply_sql(after, upto))
        users, _ = _fold(rows)
        old_users = users_load(users)
        for pk, state in users.items():
            old = old_users.get(pk)
            if old is not None:
                state.counts = _add_counts(old.counts, state.counts)
                state.weight_sum += old.weight_sum
                state.last_event_at = max(state.last_event_at, old.last_event_at)
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
        return Outcome(rows=rows, users=users, items={})

    def republished(self, rows: list[EventRow]) -> Outcome:
        # Rows of a forgotten shopper are gone: nothing to publish for them.
        return Outcome(rows=rows, users=users_load({row[1] for row in rows}), items={})

    def rebuild_hot(self, store: redis.Redis) -> None:
        patterns = ("feat:u:*", "feat:s:*")
        for pattern in patterns + hotstore.LEGACY_PATTERNS[self.name]:
            hotstore.delete_matching(store, pattern)
        for ids in _chunks_of(UserFeatures.objects, "user_id"):
            _publish(store, Outcome(rows=[], users=users_load(ids), items={}))

    def reset(self) -> None:
        UserFeatures.objects.all().delete()


class ItemsConsumer(_HotConsumer):
    """Per-item popularity, trends and conversion counts, overall and per category."""

    name = "items"

    def apply(self, rows: list[EventRow], after: int, upto: int) -> Outcome:
        if is_postgresql():
            return Outcome(rows=[], users={}, items=_items_apply_sql(after, upto))
        _, items = _fold(rows)
        old_items = items_load(items)
        for pk, item in items.items():
            old_item = old_items.get(pk)
            if old_item is not None:
                item.counts = _add_counts(old_item.counts, item.counts)
                item.popularity += old_item.popularity
                _merge_trends(old_item, item)
        dumps = orjson.dumps
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
        return Outcome(rows=[], users={}, items=items)

    def republished(self, rows: list[EventRow]) -> Outcome:
        item_ids = {row[2] for row in rows if row[2] is not None}
        return Outcome(rows=[], users={}, items=items_load(item_ids))

    def rebuild_hot(self, store: redis.Redis) -> None:
        for pattern in ("feat:i:*", "feat:z:*"):
            hotstore.delete_matching(store, pattern)
        for ids in _chunks_of(ItemFeatures.objects, "item_id"):
            _publish(store, Outcome(rows=[], users={}, items=items_load(ids)))

    def reset(self) -> None:
        ItemFeatures.objects.all().delete()


def _chunks_of(rows: Any, key: str, size: int = 10_000) -> Iterator[list[int]]:
    """The `key` values of a feature table, in order, `size` at a time."""
    last = 0
    while True:
        ids = list(
            rows.filter(**{f"{key}__gt": last}).order_by(key).values_list(key, flat=True)[:size]
        )
        if not ids:
            return
        yield ids
        last = ids[-1]


def external_ids(table: str, ids: Iterable[int]) -> dict[int, str]:
    return {pk: ext for pk, ext in fetch_by_ids(table, "id", ["external_id"], ids)}


# A shopper's external id never changes (upserts key on it), so a worker remembers them instead of
# looking up tens of thousands per batch. Bounded; a forgotten shopper has no more events.
_USER_EXTERNAL_IDS: dict[int, str] = {}
_USER_CACHE_LIMIT = 1_000_000


def user_external_ids(ids: Iterable[int]) -> dict[int, str]:
    cache = _USER_EXTERNAL_IDS
    found: dict[int, str] = {}
    missing = []
    for pk in ids:
        ext = cache.get(pk)
        if ext is None:
            missing.append(pk)
        else:
            found[pk] = ext
    if missing:
        fetched = external_ids("catalog_user", missing)
        if len(cache) + len(fetched) > _USER_CACHE_LIMIT:
            cache.clear()
        cache.update(fetched)
        found.update(fetched)
    return found


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


def user_blob(state: UserState) -> dict[str, Any]:
    return {
        "v": state.last_event_id,
        "c": state.counts,
        "w": state.weight_sum,
        "t": state.last_event_at,
    }


def item_blob(state: ItemState) -> dict[str, Any]:
    return {
        "c": state.counts,
        "p": state.popularity,
        **{f"t{window}": value for window, value in state.trends.items()},
        "r": state.trend_ref,
    }


def history_member(event_id: int, item_external_id: str, kind: str) -> str:
    # Zero-padded id: members with the same time sort by id.
    return f"{event_id:020d}|{kind}|{item_external_id}"


def history_parse(member: bytes | str, score: float) -> list[Any]:
    """[event id, item external id, type, unix time] of a history zset member and its score."""
    text = member.decode() if isinstance(member, bytes) else member
    event_id, kind, item = text.split("|", 2)
    return [int(event_id), item, kind, hotstore.history_time(score)]


def history_commands(key: str, entries: list[list[Any]], total: int, length: int) -> list[tuple]:
    """ZADD the entries ([event id, item, type, time]) and trim to the last `length` (only when
    the shopper may have more: `total` events in all)."""
    score = hotstore.history_score
    commands: list[tuple] = [
        ("zadd", key, {history_member(e[0], e[1], e[2]): score(e[3]) for e in entries})
    ]
    if total > length:
        commands.append(("zremrangebyrank", key, 0, -length - 1))
    return commands


def _publish(store: redis.Redis, outcome: Outcome) -> None:
    _send(store, _prepare(outcome))


def _prepare(outcome: Outcome) -> Prepared:
    """The database lookups `_send` needs: external ids, categories, and on a rebuild the
    recent histories."""
    users = outcome.user_blobs
    if users is None:
        dumps = orjson.dumps
        users = {pk: dumps(user_blob(state)).decode() for pk, state in outcome.users.items()}
    item_ids = set(outcome.items) | {row[2] for row in outcome.rows if row[2] is not None}
    user_ext = user_external_ids(users) if users else {}
    histories = (
        histories_from_events(list(user_ext), settings.FEATURES_HISTORY_LENGTH)
        if users and not outcome.rows
        else None
    )
    return Prepared(
        rows=outcome.rows,
        users=users,
        items=outcome.items,
        user_ext=user_ext,
        catalog=items_catalog(item_ids),
        histories=histories,
    )


def _send(store: redis.Redis, prepared: Prepared) -> None:
    """Idempotent writes of committed values: SET of the counts, ZADD of the batch's events into
    the history (members are unique per event, so a replay adds nothing), ZADD of item scores.
    No database access (see `Prepared`)."""
    catalog = prepared.catalog
    if prepared.users:
        # user id -> [event id, type, item external id, unix time, ...]: the script formats the
        # members and scores (see hotstore.users_write).
        entries: dict[int, list[Any]] = {}
        if prepared.histories is None:
            for event_id, user_id, item_id, kind, at, _ in prepared.rows:
                known = catalog.get(item_id)  # type: ignore[arg-type]
                if known is not None:
                    found = entries.get(user_id)
                    if found is None:
                        found = entries[user_id] = []
                    found += (event_id, kind, known[0], at)
        else:
            for pk, history in prepared.histories.items():
                entries[pk] = [part for e in history for part in (e[0], e[2], e[1], e[3])]
        user_ext = prepared.user_ext
        users = [
            [user_ext[pk], blob, entries.get(pk, ())]
            for pk, blob in prepared.users.items()
            if pk in user_ext
        ]
        hotstore.users_write(store, users, settings.FEATURES_HISTORY_LENGTH)
    zsets: dict[str, list[Any]] = {}
    blobs: dict[str, str] = {}
    dumps = orjson.dumps
    log_trend = hotstore.log_trend
    for pk, item in prepared.items.items():
        found_item = catalog.get(pk)
        if found_item is None:
            continue
        ext, category = found_item
        blobs[hotstore.item_key(ext)] = dumps(item_blob(item)).decode()
        scores = [("all", item.popularity)]
        for window, value in item.trends.items():
            scores.append((window, log_trend(value, item.trend_ref, window)))
        prefixes = hotstore.category_prefixes(category)
        for window, score in scores:
            zsets.setdefault(hotstore.zset_key(window), []).extend((score, ext))
            for prefix in prefixes:
                zsets.setdefault(hotstore.zset_key(window, prefix), []).extend((score, ext))
    hotstore.bulk_write(store, blobs, zsets)
