"""The "neighbours" consumer: item co-occurrence ("viewed together", "bought together").

Each interaction of a kind pairs the item with the shopper's last FEATURES_NEIGHBOURS_WINDOW
distinct items of that kind (kept in NeighbourContext, so a re-run pairs identically); pair counts
grow in ItemPair, and each changed item's top-K is merged into ItemNeighbours (exact, because
counts only grow). Runs on its own watermark, on beat, so the heavier pair writes never slow the
fresh per-user features down.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson
import redis
from django.conf import settings

from . import hotstore
from .activity import external_ids
from .bulk import fetch_by_ids, is_postgresql, raw_cursor, upsert
from .models import ItemNeighbours, ItemPair, NeighbourContext
from .pipeline import EventRow

KINDS = ("view", "buy")

# (kind, item id) -> [[other item id, count], ...] best first
Tops = dict[tuple[str, int], list[list[Any]]]


def _kind_of_type() -> dict[str, str]:
    kinds = dict.fromkeys(settings.FEATURES_VIEW_TYPES, "view")
    kinds.update(dict.fromkeys(settings.FEATURES_BUY_TYPES, "buy"))
    return kinds


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _contexts_load(user_ids: Iterable[int]) -> dict[tuple[str, int], list[int]]:
    rows = fetch_by_ids(NeighbourContext._meta.db_table, "user_id", ["kind", "recent"], user_ids)
    return {(kind, user_id): _json(recent) for user_id, kind, recent in rows}


def tops_load(item_ids: Iterable[int]) -> Tops:
    rows = fetch_by_ids(ItemNeighbours._meta.db_table, "item_id", ["kind", "neighbours"], item_ids)
    return {(kind, item_id): _json(top) for item_id, kind, top in rows}


class NeighboursConsumer:
    name = "neighbours"

    def apply(self, rows: list[EventRow], after: int, upto: int) -> Tops:
        kind_of = _kind_of_type()
        window = settings.FEATURES_NEIGHBOURS_WINDOW
        relevant = [row for row in rows if row[2] is not None and row[3] in kind_of]
        if not relevant:
            return {}
        contexts = _contexts_load({row[1] for row in relevant})
        touched_contexts: set[tuple[str, int]] = set()
        pairs: dict[tuple[str, int, int], float] = defaultdict(float)
        for _, user_id, item_or_none, event_type, _, _ in relevant:
            item_id = int(item_or_none or 0)  # `relevant` has items only
            kind = kind_of[event_type]
            context_key = (kind, user_id)
            recent = contexts.get(context_key)
            if recent is None:
                recent = contexts[context_key] = []
            for other in recent:
                if other != item_id:
                    # One row per unordered pair (lower id first); both items' top-Ks use it.
                    low, high = (item_id, other) if item_id < other else (other, item_id)
                    pairs[(kind, low, high)] += 1.0
            if item_id in recent:
                recent.remove(item_id)
            recent.append(item_id)
            if len(recent) > window:
                del recent[0]
            touched_contexts.add(context_key)
        last_event_id = rows[-1][0]
        upsert(
            NeighbourContext._meta.db_table,
            [("kind", "text"), ("user_id", "bigint"), ("recent", "jsonb")],
            ["kind", "user_id"],
            [
                (kind, user_id, orjson.dumps(contexts[(kind, user_id)]).decode())
                for kind, user_id in sorted(touched_contexts)
            ],
        )
        counts = _pairs_add(pairs)
        changed: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
        for (kind, low, high), count in counts.items():
            changed[(kind, low)][high] = count
            changed[(kind, high)][low] = count
        old = tops_load({item_id for _, item_id in changed})
        size = settings.FEATURES_NEIGHBOURS_K
        tops: Tops = {}
        for key, updates in changed.items():
            merged = {other: count for other, count in old.get(key, [])}
            merged.update(updates)
            best = heapq.nlargest(size, merged.items(), key=_rank)
            tops[key] = [[other, count] for other, count in best]
        upsert(
            ItemNeighbours._meta.db_table,
            [
                ("kind", "text"),
                ("item_id", "bigint"),
                ("neighbours", "jsonb"),
                ("last_event_id", "bigint"),
            ],
            ["kind", "item_id"],
            [
                (kind, item_id, orjson.dumps(top).decode(), last_event_id)
                for (kind, item_id), top in sorted(tops.items())
            ],
        )
        return tops

    def prepare(self, outcome: Tops) -> list[tuple]:
        return _commands(outcome)

    def publish(self, store: redis.Redis, prepared: list[tuple]) -> None:
        hotstore.run_pipeline(store, prepared)

    def republish(self, store: redis.Redis, after: int, upto: int) -> None:
        rows = ItemNeighbours.objects.filter(last_event_id__gt=after).values_list(
            "kind", "item_id", "neighbours"
        )
        tops: Tops = {}
        for kind, item_id, top in rows.iterator(chunk_size=5000):
            tops[(kind, item_id)] = top
            if len(tops) >= 5000:
                _publish(store, tops)
                tops = {}
        _publish(store, tops)

    def rebuild_hot(self, store: redis.Redis) -> None:
        hotstore.delete_matching(store, "feat:n:*")
        self.republish(store, -1, 0)

    def reset(self) -> None:
        NeighbourContext.objects.all().delete()
        ItemPair.objects.all().delete()
        ItemNeighbours.objects.all().delete()


_PAIRS_SQL = """
INSERT INTO features_itempair AS f (kind, item_id, other_id, count)
SELECT %(kind)s, u.item_id, u.other_id, u.count
FROM unnest(%(items)b::bigint[], %(others)b::bigint[], %(counts)b::float8[])
    AS u(item_id, other_id, count)
ON CONFLICT (kind, item_id, other_id) DO UPDATE SET count = f.count + EXCLUDED.count
RETURNING item_id, other_id, count
"""


def _rank(pair: tuple[int, float]) -> tuple[float, int]:
    # Highest count first, then the lower id.
    return (pair[1], -pair[0])


def _pairs_add(pairs: dict[tuple[str, int, int], float]) -> dict[tuple[str, int, int], float]:
    """Add `pairs` to ItemPair; the stored counts afterwards."""
    table = ItemPair._meta.db_table
    columns = [("kind", "text"), ("item_id", "bigint"), ("other_id", "bigint"), ("count", "float8")]
    rows = [(kind, item, other, count) for (kind, item, other), count in sorted(pairs.items())]
    if is_postgresql():
        stored: dict[tuple[str, int, int], float] = {}
        with raw_cursor() as cursor:
            for kind in KINDS:  # the kind as one parameter, not an array of 100,000 strings
                chosen = [row for row in rows if row[0] == kind]
                if not chosen:
                    continue
                cursor.execute(
                    _PAIRS_SQL,
                    {
                        "kind": kind,
                        "items": [row[1] for row in chosen],
                        "others": [row[2] for row in chosen],
                        "counts": [row[3] for row in chosen],
                    },
                )
                for item, other, count in cursor.fetchall():
                    stored[(kind, item, other)] = count
        return stored
    upsert(table, columns, ["kind", "item_id", "other_id"], rows, add=["count"])
    found = fetch_by_ids(table, "item_id", ["kind", "other_id", "count"], {r[1] for r in rows})
    return {
        (kind, item, other): count
        for item, kind, other, count in found
        if (kind, item, other) in pairs
    }


def _publish(store: redis.Redis, tops: Tops) -> None:
    hotstore.run_pipeline(store, _commands(tops))


def _commands(tops: Tops) -> list[tuple]:
    """The Redis writes of `tops` (reads the items' external ids)."""
    if not tops:
        return []
    ids = {item_id for _, item_id in tops}
    for top in tops.values():
        ids.update(other for other, _ in top)
    ext = external_ids("catalog_item", ids)
    commands: list[tuple] = []
    for (kind, item_id), top in tops.items():
        if item_id not in ext:
            continue
        value = [[ext[other], count] for other, count in top if other in ext]
        commands.append(("set", hotstore.neighbours_key(kind, ext[item_id]), orjson.dumps(value)))
    return commands
