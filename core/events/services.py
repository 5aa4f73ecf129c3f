"""Event ingestion: exactly-once storage of validated events, in bulk.

One transaction per batch: resolve storefront ids to ours (creating unknown users/items when
auto-insert is on), claim each event's idempotency key, store the events whose key was new. On
PostgreSQL that is one statement (a data-modifying CTE over arrays, or over a COPY-filled staging
table for imports); a retry, even a concurrent one, finds the keys taken and stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg.errors import UniqueViolation
from psycopg.types.json import Jsonb

from core.catalog.models import Item, User
from core.catalog.postgres import pg_cursor
from core.catalog.services import catalog_ids_resolve
from core.catalog.validation import RowError

from . import hooks, partitions
from .models import Event, EventKey
from .validation import EventIn

_COLUMNS = (
    "event_id, user_id, item_id, session_id, type, value, timestamp, ingested_at, "
    "recommendation_id, context"
)

# The general path claims the keys first (one statement, sorted bytewise: racing batches lock
# in one order, the same in every path), then creates missing users/items for the fresh events
# only, then stores them in (user, timestamp) order (per partition: (month, user)), so each
# partition's (user_id, timestamp) index is written leaf after leaf instead of at random (half
# the insert time for a backfill spread over months).
_CLAIM_KEYS = """
INSERT INTO events_eventkey (event_id, received_at)
SELECT k, %s FROM unnest(%b::text[]) AS k ORDER BY k COLLATE "C"
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_INSERT_FROM_ARRAYS = f"""
INSERT INTO events_event ({_COLUMNS})
SELECT b.event_id, b.user_id, b.item_id, b.session_id, b.type, b.value, b.timestamp, %(now)s,
       b.recommendation_id, b.context::jsonb
FROM unnest(
    %(keys)b::text[], %(user_ids)b::bigint[], %(item_ids)b::bigint[], %(session_ids)b::text[],
    %(types)b::text[], %(values)b::float8[], %(timestamps)b::timestamptz[],
    %(recommendation_ids)b::text[], %(contexts)b::text[]
) AS b(event_id, user_id, item_id, session_id, type, value, timestamp, recommendation_id, context)
ORDER BY b.user_id, b.timestamp
"""  # noqa: S608 (no user input in the SQL text)

# The staging table of the COPY path (a temporary table per connection). Its `event_id` sorts
# bytewise (COLLATE "C", like the key table): sorting 20,000 keys in the default collation took
# a tenth of the statement.
_STAGE = "events_ingest_stage"
_STAGE_TYPES = ["text", "int8", "int8", "text", "text", "float8", "timestamptz", "text", "text"]
_STAGE_COLUMNS = (
    "event_id, user_id, item_id, session_id, type, value, timestamp, recommendation_id, context"
)
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ("
    'event_id text COLLATE "C", user_id bigint, item_id bigint, session_id text, type text, '
    "value float8, timestamp timestamptz, recommendation_id text, context text"
    ") ON COMMIT DELETE ROWS"
)
# The session runs it with `jit = off`: the never-analysed staging table makes the estimates
# large enough to JIT-compile, which cost 30 ms per 20,000-row chunk and never paid back.
_INSERT_FROM_STAGE = f"""
INSERT INTO events_event ({_COLUMNS})
SELECT s.event_id, s.user_id, s.item_id, s.session_id, s.type, s.value, s.timestamp, %(now)s,
       s.recommendation_id, s.context::jsonb
FROM {_STAGE} s
ORDER BY date_trunc('month', s.timestamp), s.user_id, s.timestamp
"""  # noqa: S608
# The import's claim when no key of the chunk is stored yet (the usual case): a plain INSERT of
# the keys (sent as one array literal), sorted bytewise like every claim; the rows are then COPYed
# straight into `events_event` (COPY writes each partition's rows in batches, `INSERT ... SELECT`
# one by one). A taken key makes the claim fail with a unique violation (at once for a re-run, or
# once a racing retry's transaction commits); the chunk then goes back to its savepoint and takes
# the staging table and `_CLAIM_AND_INSERT_FROM_STAGE`, as before. What it saves per 20,000 rows
# (EXPLAIN ANALYZE): ON CONFLICT's speculative insertion (a third WAL record per key: the claim
# 61 -> 43 ms), the semi-join picking the fresh rows (15-20 ms), the sort, the staging COPY and the
# row-by-row insert. PostgreSQL's CPU per imported row 9.9 -> 6.2 us (1,000,000 MovieLens rows).
_CLAIM_ALL = """
INSERT INTO events_eventkey (event_id, received_at)
SELECT k, %(now)s FROM unnest(%(keys)s::text[]) AS k ORDER BY k COLLATE "C"
"""
_EVENT_TYPES = [
    "text", "int8", "int8", "text", "text", "float8", "timestamptz", "timestamptz", "text", "jsonb"
]  # fmt: skip
# The same with the keys claimed in the statement (sorted bytewise, like every claim), the fresh
# ones picked by a hash semi-join.
_CLAIM_AND_INSERT_FROM_STAGE = f"""
WITH fresh AS (
    INSERT INTO events_eventkey (event_id, received_at)
    SELECT event_id, %(now)s FROM {_STAGE} ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO events_event ({_COLUMNS})
SELECT s.event_id, s.user_id, s.item_id, s.session_id, s.type, s.value, s.timestamp, %(now)s,
       s.recommendation_id, s.context::jsonb
FROM {_STAGE} s WHERE s.event_id IN (SELECT event_id FROM fresh)
ORDER BY date_trunc('month', s.timestamp), s.user_id, s.timestamp
"""  # noqa: S608


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len({error.index for error in self.errors})

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": [error.as_dict() for error in self.errors],
        }


def events_ingest(
    *,
    events: Sequence[EventIn],
    use_copy: bool = False,
    id_cache: dict[tuple[str, str], int] | None = None,
) -> IngestResult:
    """Store validated events exactly once; the answer is committed when this returns.

    Events whose `event_id` is already stored (or repeats within `events`) count as duplicates.
    Unknown users/items are created when CATALOG_AUTO_INSERT_* is on, else those events are
    rejected (`unknown_user` / `unknown_item`) and leave no trace. `use_copy` stages rows with
    COPY (faster for large imports). `id_cache` lets a long import skip repeated id lookups.
    """
    result = IngestResult()
    unique: dict[str, EventIn] = {}
    for event in events:
        if event.event_id in unique:
            result.duplicates += 1
        else:
            unique[event.event_id] = event
    if not unique:
        return result
    batch = list(unique.values())
    partitions.partitions_ensure(timestamps={event.timestamp for event in batch})
    now = timezone.now()
    if partitions.is_partitioned() and not use_copy:
        # Fast path: events whose user and item exist go in one statement (in autocommit it is
        # its own transaction: one round trip). The rest take the general path below.
        batch = _store_known_postgresql(batch, now, result)
        if not batch:
            return result
    with transaction.atomic():
        if partitions.is_partitioned():
            rows = _claim_and_resolve_postgresql(batch, now, result, id_cache)
            accepted = _store_postgresql(rows, now, use_copy=use_copy) if rows else 0
        else:
            rows = _resolve_ids(batch, result, id_cache)
            accepted = _store_portable(rows, now) if rows else 0
        if rows:
            result.accepted += accepted
            result.duplicates += len(rows) - accepted
            if accepted:
                user_ids = frozenset(row[1] for row in rows)
                transaction.on_commit(
                    lambda: hooks.events_ingested(accepted=accepted, user_ids=user_ids)
                )
    return result


@dataclass
class PreparedEvents:
    """Events of a bulk load with our ids resolved (users/items created and committed), ready for
    `events_store_prepared`; `result` holds what was settled on the way (duplicates, rejects)."""

    rows: list[tuple[EventIn, int, int]]
    result: IngestResult


def events_prepare(
    *, events: Sequence[EventIn], id_cache: dict[tuple[str, str], int]
) -> PreparedEvents:
    """PostgreSQL bulk loads (import_events), first step, on the reading thread: resolve ids and
    create the missing users/items in a short transaction of their own, so the storing
    transactions (several writer threads at once) never wait on each other's uncommitted new
    users (a file sorted by user shares one with the next chunk) or items. As everywhere, only
    new events create users/items: events naming a missing one have their keys looked up first,
    and those already stored count as duplicates (a re-run cannot bring back a forgotten shopper).
    Rejections (auto-insert off) are decided here too."""
    result = IngestResult()
    batch = list(events)
    if len({event.event_id for event in batch}) < len(batch):  # keep the first of each key
        unique: dict[str, EventIn] = {}
        for event in batch:
            if event.event_id in unique:
                result.duplicates += 1
            else:
                unique[event.event_id] = event
        batch = list(unique.values())
    if not batch:
        return PreparedEvents([], result)
    with transaction.atomic():
        rows = _resolve_ids(batch, result, id_cache)
    return PreparedEvents(rows, result)


def events_store_prepared(*, prepared: PreparedEvents) -> IngestResult:
    """Second step: claim the keys and store the fresh events (COPY), committed on return. Safe
    on several threads at once and against racing retries (keys claimed in one sorted order)."""
    result = prepared.result
    rows = prepared.rows
    if not rows:
        return result
    partitions.partitions_ensure(timestamps=(row[0].timestamp for row in rows))
    now = timezone.now()
    with transaction.atomic():
        # Keys claimed in one statement, then the rows COPYed; when a key is taken, claimed from
        # a staging table in the storing statement itself (see `_CLAIM_ALL`).
        accepted = _store_postgresql(rows, now, use_copy=True, claim=True)
        result.accepted += accepted
        result.duplicates += len(rows) - accepted
        if accepted:
            user_ids = frozenset(row[1] for row in rows)
            transaction.on_commit(
                lambda: hooks.events_ingested(accepted=accepted, user_ids=user_ids)
            )
    return result


# Resolve storefront ids, claim keys and store, in one statement. Events naming an unknown user
# or item are left out (their keys unclaimed) and reported back for the general path. `LIMIT 1`
# keeps each LATERAL lookup a unique-index probe: without it PostgreSQL pulls the subquery up into
# a join, and with stale statistics (a freshly loaded catalog) hashes the whole table per batch
# (31 of 46 ms per 1,000 events over 100,000 users).
_INSERT_KNOWN = f"""
WITH b AS (
    SELECT * FROM unnest(
        %(keys)b::text[], %(user_exts)b::text[], %(item_exts)b::text[], %(session_ids)b::text[],
        %(types)b::text[], %(values)b::float8[], %(timestamps)b::timestamptz[],
        %(recommendation_ids)b::text[], %(contexts)b::text[]
    ) AS b(event_id, user_ext, item_ext, session_id, type, value, timestamp, recommendation_id,
           context)
),
resolved AS (
    SELECT b.*, u.id AS user_id, i.id AS item_id FROM b
    CROSS JOIN LATERAL (SELECT id FROM catalog_user WHERE external_id = b.user_ext LIMIT 1) AS u
    CROSS JOIN LATERAL (SELECT id FROM catalog_item WHERE external_id = b.item_ext LIMIT 1) AS i
),
fresh AS (
    INSERT INTO events_eventkey (event_id, received_at)
    SELECT event_id, %(now)s FROM resolved ORDER BY event_id COLLATE "C"
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
),
stored AS (
    INSERT INTO events_event ({_COLUMNS})
    SELECT r.event_id, r.user_id, r.item_id, r.session_id, r.type, r.value, r.timestamp, %(now)s,
           r.recommendation_id, r.context::jsonb
    FROM resolved r JOIN fresh USING (event_id)
    ORDER BY r.user_id, r.timestamp
    RETURNING user_id
)
SELECT
    (SELECT count(*) FROM stored),
    (SELECT count(*) FROM resolved),
    ARRAY(SELECT DISTINCT user_id FROM stored),
    CASE WHEN (SELECT count(*) FROM resolved) < %(n)s THEN
        ARRAY(SELECT b.event_id FROM b LEFT JOIN resolved r USING (event_id)
              WHERE r.event_id IS NULL)
    END
"""  # noqa: S608 (no user input in the SQL text)


def _store_known_postgresql(
    batch: list[EventIn], now: datetime, result: IngestResult
) -> list[EventIn]:
    """Store the events whose user and item exist; the others, for the general path."""
    with pg_cursor() as cursor:
        cursor.execute(
            _INSERT_KNOWN,
            {
                "now": now,
                "n": len(batch),
                "keys": [e.event_id for e in batch],
                "user_exts": [e.user_id for e in batch],
                "item_exts": [e.item_id for e in batch],
                "session_ids": [e.session_id for e in batch],
                "types": [e.type for e in batch],
                "values": [e.value for e in batch],
                "timestamps": [e.timestamp for e in batch],
                "recommendation_ids": [e.recommendation_id for e in batch],
                "contexts": [e.context for e in batch],
            },
        )
        row = cursor.fetchone()
        assert row is not None  # an aggregate always answers one row
        accepted, resolved, user_ids, unresolved = row
    result.accepted += accepted
    result.duplicates += resolved - accepted
    if accepted:
        stored_users = frozenset(user_ids)
        transaction.on_commit(
            lambda: hooks.events_ingested(accepted=accepted, user_ids=stored_users)
        )
    if not unresolved:
        return []
    left = set(unresolved)
    return [event for event in batch if event.event_id in left]


# (event, our user id, our item id)
_Row = tuple[EventIn, int, int]


def _claim_and_resolve_postgresql(
    batch: list[EventIn],
    now: datetime,
    result: IngestResult,
    id_cache: dict[tuple[str, str], int] | None,
) -> list[_Row]:
    """Reject events naming unknown users/items (auto-insert off), claim the others' keys, and
    resolve (creating where allowed) the ids of the events whose key was fresh. Only new events
    create users/items: a retry changes nothing, not even bringing back a shopper forgotten
    meanwhile. A racing retry blocks on the first one's uncommitted keys, then finds them taken."""
    cache = id_cache if id_cache is not None else {}
    auto_users = settings.CATALOG_AUTO_INSERT_USERS
    auto_items = settings.CATALOG_AUTO_INSERT_ITEMS
    kept = batch
    if not (auto_users and auto_items):
        # Decide rejections before claiming anything, so a rejected event leaves no trace.
        known_users = (
            {} if auto_users else _resolve(User, "u", {e.user_id for e in kept}, False, cache)
        )
        known_items = (
            {} if auto_items else _resolve(Item, "i", {e.item_id for e in kept}, False, cache)
        )
        kept = _reject_unknown(batch, result, known_users, known_items)
        if not kept:
            return []
    with pg_cursor() as cursor:
        cursor.execute(_CLAIM_KEYS, [now, [e.event_id for e in kept]])
        fresh = {row[0] for row in cursor.fetchall()}
    if len(fresh) < len(kept):
        result.duplicates += len(kept) - len(fresh)
        kept = [e for e in kept if e.event_id in fresh]
    # Known ids come from the cache filled above (auto-insert off) or are looked up; unknown ones
    # are created (auto-insert on).
    user_ids = _resolve(User, "u", {e.user_id for e in kept}, auto_users, cache)
    item_ids = _resolve(Item, "i", {e.item_id for e in kept}, auto_items, cache)
    return [(e, user_ids[e.user_id], item_ids[e.item_id]) for e in kept]


def _reject_unknown(
    batch: list[EventIn],
    result: IngestResult,
    known_users: Mapping[str, int],
    known_items: Mapping[str, int],
) -> list[EventIn]:
    """The events whose user and item exist or may be created (CATALOG_AUTO_INSERT_*); the others
    get a per-index error in `result`."""
    auto_users = settings.CATALOG_AUTO_INSERT_USERS
    auto_items = settings.CATALOG_AUTO_INSERT_ITEMS
    kept = []
    for event in batch:
        bad = False
        if not auto_users and event.user_id not in known_users:
            result.errors.append(
                RowError(event.index, "user_id", "unknown_user", "no such user (auto-insert off)")
            )
            bad = True
        if not auto_items and event.item_id not in known_items:
            result.errors.append(
                RowError(event.index, "item_id", "unknown_item", "no such item (auto-insert off)")
            )
            bad = True
        if not bad:
            kept.append(event)
    return kept


def _resolve_ids(
    batch: list[EventIn], result: IngestResult, id_cache: dict[tuple[str, str], int] | None
) -> list[_Row]:
    """Resolve ids, creating users/items only for events whose key is not taken. Not PostgreSQL
    (the database serialises writers, so looking first is race-free), and `events_prepare`."""
    cache = id_cache if id_cache is not None else {}
    auto_users = settings.CATALOG_AUTO_INSERT_USERS
    auto_items = settings.CATALOG_AUTO_INSERT_ITEMS
    named_users = {event.user_id for event in batch}
    named_items = {event.item_id for event in batch}
    user_ids = _resolve(User, "u", named_users, False, cache)
    item_ids = _resolve(Item, "i", named_items, False, cache)
    if len(user_ids) == len(named_users) and len(item_ids) == len(named_items):
        # Every id is known (most chunks of a long import): nothing to reject or create.
        return [(e, user_ids[e.user_id], item_ids[e.item_id]) for e in batch]
    if auto_users and auto_items:  # nothing to reject: the missing ids, by set difference
        kept = batch
        missing_users = named_users - user_ids.keys()
        missing_items = named_items - item_ids.keys()
    else:
        # Decide rejections before creating anything, so a rejected event leaves no trace.
        kept = _reject_unknown(batch, result, user_ids, item_ids)
        missing_users = {e.user_id for e in kept if e.user_id not in user_ids}
        missing_items = {e.item_id for e in kept if e.item_id not in item_ids}
    if missing_users or missing_items:
        # Only new events may create users/items: a retry must change nothing, not even bring
        # back a shopper who was forgotten meanwhile. Events already stored are duplicates.
        # (Only the events that would create something need checking here; the insert itself
        # settles the others.) First the first event naming each missing id: when its key is
        # new, the id is needed. Only for ids whose first event was stored already are all the
        # events naming them looked up (a file of new shoppers: one look-up per shopper, not
        # per event).
        creators = [e for e in kept if e.user_id not in user_ids or e.item_id not in item_ids]
        first: dict[tuple[str, str], str] = {}
        for e in creators:
            if e.user_id not in user_ids:
                first.setdefault(("u", e.user_id), e.event_id)
            if e.item_id not in item_ids:
                first.setdefault(("i", e.item_id), e.event_id)
        taken = _taken_keys(list(set(first.values())))
        unsettled = {name for name, key in first.items() if key in taken}
        if unsettled:
            taken |= _taken_keys(
                [
                    e.event_id
                    for e in creators
                    if ("u", e.user_id) in unsettled or ("i", e.item_id) in unsettled
                ]
            )
        if taken:
            result.duplicates += sum(1 for e in kept if e.event_id in taken)
            kept = [e for e in kept if e.event_id not in taken]
            missing_users = {e.user_id for e in kept if e.user_id not in user_ids}
            missing_items = {e.item_id for e in kept if e.item_id not in item_ids}
    if missing_users:
        user_ids.update(_resolve(User, "u", missing_users, True, cache))
    if missing_items:
        item_ids.update(_resolve(Item, "i", missing_items, True, cache))
    return [(e, user_ids[e.user_id], item_ids[e.item_id]) for e in kept]


def _taken_keys(keys: list[str]) -> set[str]:
    """Which of these idempotency keys are already stored."""
    if connection.vendor == "postgresql":
        with pg_cursor() as cursor:
            cursor.execute(
                "SELECT k.event_id FROM unnest(%b::text[]) AS wanted(key) CROSS JOIN LATERAL "
                "(SELECT event_id FROM events_eventkey WHERE event_id = wanted.key LIMIT 1) AS k",
                [keys],
            )
            return {row[0] for row in cursor.fetchall()}
    taken: set[str] = set()
    for start in range(0, len(keys), 500):  # SQLite's bound-variable limit
        taken.update(
            EventKey.objects.filter(event_id__in=keys[start : start + 500]).values_list(
                "event_id", flat=True
            )
        )
    return taken


def _resolve(
    model: type[User] | type[Item],
    kind: str,
    external_ids: set[str],
    create: bool,
    cache: dict[tuple[str, str], int],
) -> dict[str, int]:
    get = cache.get
    found = {ext: pk for ext in external_ids if (pk := get((kind, ext))) is not None}
    if len(found) < len(external_ids):
        wanted = [ext for ext in external_ids if ext not in found]
        fetched = catalog_ids_resolve(model=model, external_ids=wanted, create_missing=create)
        found.update(fetched)
        if cache is not None:
            # Only remember ids once committed would be stricter; an import runs in one process
            # and a rollback ends it, so the cache dies with it.
            for ext, pk in fetched.items():
                cache[(kind, ext)] = pk
    return found


def _store_postgresql(
    batch: list[_Row], now: datetime, *, use_copy: bool, claim: bool = False
) -> int:
    """Store rows whose keys are claimed already; with `claim` (COPY only), claim them in the
    same statement and store those that were new. How many were stored."""
    with pg_cursor() as cursor:
        if not use_copy:
            events = [row[0] for row in batch]
            cursor.execute(
                _INSERT_FROM_ARRAYS,
                {
                    "now": now,
                    "keys": [e.event_id for e in events],
                    "user_ids": [row[1] for row in batch],
                    "item_ids": [row[2] for row in batch],
                    "session_ids": [e.session_id for e in events],
                    "types": [e.type for e in events],
                    "values": [e.value for e in events],
                    "timestamps": [e.timestamp for e in events],
                    "recommendation_ids": [e.recommendation_id for e in events],
                    "contexts": [e.context for e in events],
                },
            )
            return cursor.rowcount
        cursor.execute("SET LOCAL jit = off")
        if claim:
            try:
                with transaction.atomic():  # a savepoint: a taken key undoes the claim only
                    cursor.execute(_CLAIM_ALL, {"now": now, "keys": _text_array(batch)})
            except UniqueViolation:  # a key of the chunk is taken: key by key, from a stage
                _copy_to_stage(cursor, batch)
                cursor.execute(_CLAIM_AND_INSERT_FROM_STAGE, {"now": now})
                return cursor.rowcount
            _copy_events(cursor, batch, now)
            return len(batch)
        _copy_to_stage(cursor, batch)
        cursor.execute(_INSERT_FROM_STAGE, {"now": now})
        return cursor.rowcount


def _text_array(batch: list[_Row]) -> str | list[str]:
    """The rows' keys as a PostgreSQL array literal, joined in C (psycopg dumps a list of
    strings element by element in Python: a tenth of the import's client CPU per row); a list
    when a key holds a character the literal would have to escape."""
    keys = [row[0].event_id for row in batch]
    text = '","'.join(keys)
    if text.count('"') != 2 * (len(keys) - 1) or "\\" in text:  # a key holds `"` or `\`
        return keys
    return '{"' + text + '"}'


def _copy(cursor: psycopg.Cursor, sql: str, types: Sequence[str], rows: Iterable[tuple]) -> None:
    # Binary COPY: psycopg encodes the rows in C (a fifth of the text format's CPU).
    with cursor.copy(sql) as copy:
        copy.set_types(types)
        write_row = copy.write_row
        for row in rows:
            write_row(row)


def _copy_to_stage(cursor: psycopg.Cursor, batch: list[_Row]) -> None:
    cursor.execute(_CREATE_STAGE)
    _copy(
        cursor,
        f"COPY {_STAGE} ({_STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)",
        _STAGE_TYPES,
        (
            (e.event_id, user_pk, item_pk, e.session_id, e.type, e.value, e.timestamp,
             e.recommendation_id, e.context)
            for e, user_pk, item_pk in batch
        ),
    )  # fmt: skip


def _copy_events(cursor: psycopg.Cursor, batch: list[_Row], now: datetime) -> None:
    """COPY rows whose keys are claimed into `events_event`, in user order (stable: a file's
    own order within a shopper), so each partition's (user_id, timestamp) index is written leaf
    after leaf rather than at random."""
    _copy(
        cursor,
        f"COPY events_event ({_COLUMNS}) FROM STDIN (FORMAT BINARY)",
        _EVENT_TYPES,
        (
            (e.event_id, user_pk, item_pk, e.session_id, e.type, e.value, e.timestamp, now,
             e.recommendation_id,
             None if e.context is None else Jsonb(e.context, dumps=str))  # JSON already
            for e, user_pk, item_pk in sorted(batch, key=itemgetter(1))
        ),
    )  # fmt: skip


def _store_portable(batch: list[_Row], now: datetime) -> int:
    """SQLite and friends: the database serialises writers (IMMEDIATE transactions), so
    look-then-insert inside the transaction is race-free."""
    taken = _taken_keys([row[0].event_id for row in batch])
    fresh = [row for row in batch if row[0].event_id not in taken]
    # executemany, not bulk_create: the ORM's per-field SQL compilation would cost more than
    # SQLite's insert itself.
    ops = connection.ops
    stamp = ops.adapt_datetimefield_value(now)
    context_field = Event._meta.get_field("context")
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO events_eventkey (event_id, received_at) VALUES (%s, %s)",
            [(e.event_id, stamp) for e, _, _ in fresh],
        )
        cursor.executemany(
            f"INSERT INTO events_event ({_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})",  # noqa: S608
            [
                (
                    e.event_id,
                    user_pk,
                    item_pk,
                    e.session_id,
                    e.type,
                    e.value,
                    ops.adapt_datetimefield_value(e.timestamp),
                    stamp,
                    e.recommendation_id,
                    None
                    if e.context is None
                    else context_field.get_db_prep_value(
                        orjson.loads(e.context), connection
                    ),  # Django's own JSON text, so JSON lookups match
                )
                for e, user_pk, item_pk in fresh
            ],
        )
    return len(fresh)


def events_delete_for_user(user_pk: int) -> int:
    """Every event of one shopper (right to be forgotten); how many went."""
    return Event.objects.filter(user_id=user_pk)._raw_delete(Event.objects.db)


def events_retention_apply(*, now: datetime | None = None) -> dict[str, Any]:
    """Drop event partitions older than EVENTS_RETENTION_DAYS (when set) and idempotency keys
    older than EVENTS_DEDUP_DAYS. Safe to run twice."""
    now = now or timezone.now()
    report: dict[str, Any] = {"dropped_partitions": [], "pruned_keys": 0}
    if settings.EVENTS_RETENTION_DAYS:
        report["dropped_partitions"] = partitions.partitions_drop_before(
            cutoff=now - timedelta(days=settings.EVENTS_RETENTION_DAYS)
        )
    key_cutoff = now - timedelta(days=settings.EVENTS_DEDUP_DAYS)
    report["pruned_keys"] = EventKey.objects.filter(received_at__lt=key_cutoff)._raw_delete(
        EventKey.objects.db
    )
    return report
