"""Monthly partitions of the events table (PostgreSQL only; a no-op elsewhere).

Layout: `events_event` is partitioned by RANGE (timestamp); `events_event_pYYYYMM` holds one
month (UTC); `events_event_default` catches anything no partition covers, so an insert never fails.
Ingestion creates the partitions a batch needs before it inserts, so the default one stays empty;
if it did receive rows, creating their month moves them over. Retention drops whole partitions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime

from django.db import connection, transaction

logger = logging.getLogger(__name__)

PARENT = "events_event"
DEFAULT_PARTITION = "events_event_default"
_LOCK_KEY = 0x6576_656E_7473  # advisory lock: one partition creator at a time

# Months known to have a partition, per process (filled after commit, so a rolled-back creation
# is not remembered).
_known_months: set[date] = set()


def is_partitioned() -> bool:
    return connection.vendor == "postgresql"


def month_of(moment: datetime) -> date:
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{PARENT}_p{month.year:04d}{month.month:02d}"


def _bound(month: date) -> str:
    return f"{month.isoformat()} 00:00:00+00"


def partitions_list() -> list[tuple[str, date]]:
    """(table, month) of every monthly partition, oldest first."""
    if not is_partitioned():
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [PARENT],
        )
        names = [row[0] for row in cursor.fetchall()]
    months = []
    prefix = f"{PARENT}_p"
    for name in names:
        if name.startswith(prefix) and len(name) == len(prefix) + 6:
            digits = name[len(prefix) :]
            months.append((name, date(int(digits[:4]), int(digits[4:]), 1)))
    return sorted(months, key=lambda pair: pair[1])


def partitions_ensure(*, timestamps: Iterable[datetime]) -> list[str]:
    """Create the monthly partitions these timestamps need; the names created."""
    if not is_partitioned():
        return []
    moments = timestamps if isinstance(timestamps, (list, tuple, set, frozenset)) else [*timestamps]
    if not moments:
        return []
    # Usually every month between the earliest and the latest is known: min and max (in C) say
    # so without a month computed per event (a fifth of an import chunk's Python otherwise).
    month, last = month_of(min(moments)), month_of(max(moments))
    while month in _known_months and month < last:
        month = next_month(month)
    if month == last and month in _known_months:
        return []
    months = {month_of(moment) for moment in moments} - _known_months
    if not months:
        return []
    created: list[str] = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        for month in sorted(months):
            name = partition_name(month)
            cursor.execute("SELECT to_regclass(%s)", [name])
            if cursor.fetchone()[0] is None:
                _create(cursor, month)
                created.append(name)
        transaction.on_commit(lambda: _known_months.update(months))
    if created:
        logger.info("events: created partitions %s", ", ".join(created))
    return created


def _create(cursor, month: date) -> None:
    name = partition_name(month)
    low, high = _bound(month), _bound(next_month(month))
    # LIKE + ATTACH rather than CREATE ... PARTITION OF: rows of this month that landed in the
    # default partition move first, else attaching would fail.
    cursor.execute(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "  # noqa: S608 (names are ours)
        "WHERE timestamp >= %s AND timestamp < %s RETURNING *) "
        f"INSERT INTO {name} SELECT * FROM moved",
        [low, high],
    )
    if cursor.rowcount:
        logger.warning(
            "events: moved %s rows from the default partition to %s", cursor.rowcount, name
        )
    # The CHECK lets ATTACH skip scanning the new table; it is redundant afterwards.
    cursor.execute(
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_range "
        f"CHECK (timestamp >= '{low}' AND timestamp < '{high}')"
    )
    cursor.execute(
        f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ('{low}') TO ('{high}')"
    )
    cursor.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_range")


def partitions_drop_before(*, cutoff: datetime) -> list[str]:
    """Drop the partitions whose whole month is older than `cutoff`, and delete older stragglers
    from the default partition. The names dropped. Elsewhere than PostgreSQL: delete rows."""
    from .models import Event

    if not is_partitioned():
        deleted = Event.objects.filter(timestamp__lt=cutoff)._raw_delete(Event.objects.db)
        return [f"{deleted} rows"] if deleted else []
    dropped = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        for name, month in partitions_list():
            if datetime.combine(next_month(month), datetime.min.time(), tzinfo=UTC) <= cutoff:
                cursor.execute(f"DROP TABLE {name}")
                dropped.append(name)
                _known_months.discard(month)
        cursor.execute(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE timestamp < %s",  # noqa: S608
            [cutoff],
        )
    if dropped:
        logger.info("events: dropped partitions %s", ", ".join(dropped))
    return dropped
