"""Catalog writes: upsert items and users (one or many), delete items, forget users, and resolve
storefront ids to ours for the event path (creating unknown ones when auto-insert is on)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.db import connection, transaction
from django.utils import timezone

from . import hooks
from .models import Item, User
from .postgres import pg_cursor
from .validation import ItemIn, UserIn

_ITEM_UPDATE_FIELDS = [
    "title",
    "category",
    "tags",
    "price",
    "available",
    "attributes",
    "updated_at",
    "deleted_at",
]


@dataclass(frozen=True)
class UpsertResult:
    created: int
    updated: int


@dataclass(frozen=True)
class ForgetReport:
    external_id: str
    removed: dict[str, int] = field(default_factory=dict)


def _last_wins(rows: Sequence[ItemIn] | Sequence[UserIn]) -> list:
    # One row per id, the last one (a batch naming an id twice means its last version).
    return list({row.external_id: row for row in rows}.values())


def items_upsert(*, items: Sequence[ItemIn], now: datetime | None = None) -> UpsertResult:
    """Create or replace items by external id (10,000 a statement on PostgreSQL). A deleted item
    named again comes back."""
    now = now or timezone.now()
    rows = _last_wins(items)
    if not rows:
        return UpsertResult(created=0, updated=0)
    ordered = sorted(rows, key=lambda row: row.external_id)  # one lock order for racing batches
    with transaction.atomic():
        if connection.vendor == "postgresql":
            created = _items_upsert_postgresql(ordered, now)
            existing = len(rows) - created
        else:
            existing = _existing(Item, [row.external_id for row in rows])
            Item.objects.bulk_create(
                [
                    Item(
                        external_id=row.external_id,
                        title=row.title,
                        category=row.category,
                        tags=list(row.tags),
                        price=row.price,
                        available=row.available,
                        attributes=row.attributes or {},
                        created_at=now,
                        updated_at=now,
                        deleted_at=None,
                    )
                    for row in ordered
                ],
                batch_size=500,
                update_conflicts=True,
                unique_fields=["external_id"],
                update_fields=_ITEM_UPDATE_FIELDS,
            )
        unavailable = [row.external_id for row in rows if not row.available]
        if unavailable:
            ids = list(
                Item.objects.filter(external_id__in=unavailable).values_list("id", flat=True)
            )
            transaction.on_commit(lambda: hooks.items_removed(item_ids=ids))
        available = [row.external_id for row in rows if row.available]
        if available:
            transaction.on_commit(lambda: hooks.items_restored(external_ids=available))
    return UpsertResult(created=len(rows) - existing, updated=existing)


def item_upsert(*, item: ItemIn, now: datetime | None = None) -> tuple[Item, bool]:
    """(item, created)."""
    result = items_upsert(items=[item], now=now)
    return Item.objects.get(external_id=item.external_id), result.created == 1


def item_delete(*, external_id: str, now: datetime | None = None) -> bool:
    """Take an item out of the catalog and out of every recommendation. Its events stay (history
    of other shoppers). False when there is no such (undeleted) item."""
    now = now or timezone.now()
    with transaction.atomic():
        item = (
            Item.objects.select_for_update()
            .filter(external_id=external_id, deleted_at__isnull=True)
            .first()
        )
        if item is None:
            return False
        item.deleted_at = now
        item.updated_at = now
        item.save(update_fields=["deleted_at", "updated_at"])
        item_id = item.pk
        transaction.on_commit(lambda: hooks.items_removed(item_ids=[item_id]))
    return True


def users_upsert(*, users: Sequence[UserIn], now: datetime | None = None) -> UpsertResult:
    now = now or timezone.now()
    rows = _last_wins(users)
    if not rows:
        return UpsertResult(created=0, updated=0)
    ordered = sorted(rows, key=lambda row: row.external_id)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            existing = len(rows) - _users_upsert_postgresql(ordered, now)
        else:
            existing = _existing(User, [row.external_id for row in rows])
            User.objects.bulk_create(
                [
                    User(
                        external_id=row.external_id,
                        attributes=row.attributes or {},
                        created_at=now,
                        updated_at=now,
                    )
                    for row in ordered
                ],
                batch_size=500,
                update_conflicts=True,
                unique_fields=["external_id"],
                update_fields=["attributes", "updated_at"],
            )
    return UpsertResult(created=len(rows) - existing, updated=existing)


def user_upsert(*, user: UserIn, now: datetime | None = None) -> tuple[User, bool]:
    result = users_upsert(users=[user], now=now)
    return User.objects.get(external_id=user.external_id), result.created == 1


def user_forget(*, external_id: str) -> ForgetReport | None:
    """The right to be forgotten: the shopper, their events, and whatever other apps keep about
    them (each registered eraser) go, in one transaction. None when there is no such shopper.

    The idempotency keys of their events stay: they are opaque, and keeping them stops a late
    retry from bringing the forgotten events back."""
    with transaction.atomic():
        user = User.objects.select_for_update().filter(external_id=external_id).first()
        if user is None:
            return None
        removed = {name: eraser(user.pk) for name, eraser in hooks.user_erasers().items()}
        user.delete()
    return ForgetReport(external_id=external_id, removed={"user": 1, **removed})


# PostgreSQL: one statement per 10,000 rows, arrays as binary parameters; `xmax = 0` tells an
# inserted row from an updated one.
_ITEMS_UPSERT = """
INSERT INTO catalog_item (external_id, title, category, tags, price, available, attributes,
                          created_at, updated_at, deleted_at)
SELECT ext, title, category, tags::jsonb, price, available, attributes::jsonb, %(now)s, %(now)s,
       NULL
FROM unnest(%(ext)b::text[], %(title)b::text[], %(category)b::text[], %(tags)b::text[],
            %(price)b::numeric[], %(available)b::bool[], %(attributes)b::text[])
     AS t(ext, title, category, tags, price, available, attributes)
ON CONFLICT (external_id) DO UPDATE SET
    title = EXCLUDED.title, category = EXCLUDED.category, tags = EXCLUDED.tags,
    price = EXCLUDED.price, available = EXCLUDED.available, attributes = EXCLUDED.attributes,
    updated_at = EXCLUDED.updated_at, deleted_at = NULL
RETURNING (xmax = 0)
"""

_USERS_UPSERT = """
INSERT INTO catalog_user (external_id, attributes, created_at, updated_at)
SELECT ext, attributes::jsonb, %(now)s, %(now)s
FROM unnest(%(ext)b::text[], %(attributes)b::text[]) AS t(ext, attributes)
ON CONFLICT (external_id) DO UPDATE SET
    attributes = EXCLUDED.attributes, updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0)
"""


def _items_upsert_postgresql(rows: list[ItemIn], now: datetime) -> int:
    created = 0
    with pg_cursor() as cursor:
        for start in range(0, len(rows), 10_000):
            part = rows[start : start + 10_000]
            cursor.execute(
                _ITEMS_UPSERT,
                {
                    "now": now,
                    "ext": [row.external_id for row in part],
                    "title": [row.title for row in part],
                    "category": [row.category for row in part],
                    "tags": [orjson.dumps(list(row.tags)).decode() for row in part],
                    "price": [row.price for row in part],
                    "available": [row.available for row in part],
                    "attributes": [orjson.dumps(row.attributes or {}).decode() for row in part],
                },
            )
            created += sum(1 for (inserted,) in cursor.fetchall() if inserted)
    return created


def _users_upsert_postgresql(rows: list[UserIn], now: datetime) -> int:
    created = 0
    with pg_cursor() as cursor:
        for start in range(0, len(rows), 10_000):
            part = rows[start : start + 10_000]
            cursor.execute(
                _USERS_UPSERT,
                {
                    "now": now,
                    "ext": [row.external_id for row in part],
                    "attributes": [orjson.dumps(row.attributes or {}).decode() for row in part],
                },
            )
            created += sum(1 for (inserted,) in cursor.fetchall() if inserted)
    return created


def _existing(model: type[Item] | type[User], external_ids: list[str]) -> int:
    count = 0
    for start in range(0, len(external_ids), 5000):
        count += model.objects.filter(external_id__in=external_ids[start : start + 5000]).count()
    return count


def _lookup(model: type[Item] | type[User], external_ids: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    if connection.vendor == "postgresql":
        # LATERAL + LIMIT 1: one unique-index probe per id, whatever the statistics say (with
        # `= ANY`, or a LATERAL without LIMIT, which PostgreSQL pulls up into a plain join, the
        # planner may hash the whole table: 5x slower at 200,000 users).
        with pg_cursor() as cursor:
            table = model._meta.db_table
            sql = (
                "SELECT t.external_id, t.id FROM unnest(%b::text[]) AS wanted(ext) "  # noqa: S608
                f"CROSS JOIN LATERAL (SELECT external_id, id FROM {table} "
                "WHERE external_id = wanted.ext LIMIT 1) AS t"
            )
            cursor.execute(sql, [external_ids])
            found.update(cursor.fetchall())
        return found
    for start in range(0, len(external_ids), 500):  # SQLite's bound-variable limit
        found.update(
            model.objects.filter(external_id__in=external_ids[start : start + 500]).values_list(
                "external_id", "id"
            )
        )
    return found


def _insert_missing(
    model: type[Item] | type[User], external_ids: list[str], now: datetime
) -> dict[str, int]:
    """Create bare rows; the ids of those this call created (others were created concurrently).
    Sorted, so two batches creating the same new ids take their locks in one order (no
    deadlock); ON CONFLICT DO NOTHING, so a concurrent creator wins quietly."""
    external_ids = sorted(external_ids)
    if connection.vendor == "postgresql":
        table = model._meta.db_table
        extra = ", title, category, tags, available, deleted_at" if model is Item else ""
        extra_values = ", '', '', '[]'::jsonb, true, NULL" if model is Item else ""
        with pg_cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (external_id, attributes, created_at, updated_at{extra}) "  # noqa: S608
                f"SELECT ext, '{{}}'::jsonb, %s, %s{extra_values} "
                "FROM unnest(%b::text[]) AS ext ON CONFLICT (external_id) DO NOTHING "
                "RETURNING external_id, id",
                [now, now, external_ids],
            )
            return dict(cursor.fetchall())
    # SQLite: executemany (the ORM's bulk_create compiles SQL per field, slower than the insert).
    stamp = connection.ops.adapt_datetimefield_value(now)
    table = model._meta.db_table
    if model is Item:
        sql = (
            f"INSERT OR IGNORE INTO {table} (external_id, title, category, tags, available, "  # noqa: S608
            "attributes, created_at, updated_at) VALUES (%s, '', '', '[]', 1, '{}', %s, %s)"
        )
    else:
        sql = (
            f"INSERT OR IGNORE INTO {table} (external_id, attributes, created_at, updated_at) "  # noqa: S608
            "VALUES (%s, '{}', %s, %s)"
        )
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(ext, stamp, stamp) for ext in external_ids])
    return {}


def catalog_ids_resolve(
    *, model: type[Item] | type[User], external_ids: Collection[str], create_missing: bool
) -> dict[str, int]:
    """Our ids for these storefront ids. With `create_missing`, unknown ones are created (bare:
    the catalog fills them in later); otherwise they are absent from the answer. Call it inside
    the transaction that uses the ids, so created rows vanish with a rollback."""
    wanted = list(set(external_ids))
    if not wanted:
        return {}
    found = _lookup(model, wanted)
    missing = [ext for ext in wanted if ext not in found]
    if missing and create_missing:
        created = _insert_missing(model, missing, timezone.now())
        found.update(created)
        if len(created) < len(missing):
            found.update(_lookup(model, [ext for ext in missing if ext not in created]))
    return found
