"""Set-at-a-time reads and upserts of the feature tables: one statement per table per batch.

PostgreSQL: arrays bound as parameters and `unnest`ed (`INSERT ... SELECT FROM unnest(...) ON
CONFLICT DO UPDATE`), so 50,000 rows cost one round trip. Elsewhere (the embedded SQLite
default): `executemany` of the same upsert. Callers hold the consumer's watermark lock, so
read-modify-write of these tables is race-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection

_CHUNK = 500


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def raw_cursor() -> Any:
    """PostgreSQL: a psycopg cursor on Django's connection (same transaction) with server-side
    parameter binding. Django's default client-side binding quotes every array element in Python
    (seconds for 50,000 rows); bound, lists of numbers travel in binary."""
    import psycopg

    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


def epoch_sql(column: str) -> str:
    """SQL for the Unix time (float seconds) of a datetime column."""
    if is_postgresql():
        return f"EXTRACT(EPOCH FROM {column})::float8"
    # SQLite stores UTC text; whole seconds from %s, the fraction from %f (milliseconds).
    return (
        f"(CAST(strftime('%%s', {column}) AS REAL) + CAST(strftime('%%f', {column}) AS REAL)"
        f" - CAST(strftime('%%S', {column}) AS REAL))"
    )


def fetch_by_ids(
    table: str, key: str, columns: Sequence[str], ids: Iterable[int], *, where: str = ""
) -> list[tuple]:
    """Rows of `table` whose `key` is one of `ids`: (key, *columns). `where` is an extra
    SQL condition without parameters (e.g. "kind = 'view'")."""
    ids = list(ids)
    if not ids:
        return []
    select = ", ".join([key, *columns])
    extra = f" AND {where}" if where else ""
    if is_postgresql():
        with raw_cursor() as cursor:
            cursor.execute(
                f"SELECT {select} FROM {table} WHERE {key} = ANY(%b::bigint[]){extra}",  # noqa: S608
                [ids],
            )
            return cursor.fetchall()
    with connection.cursor() as cursor:
        rows: list[tuple] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                f"SELECT {select} FROM {table} WHERE {key} IN ({marks}){extra}",  # noqa: S608
                chunk,
            )
            rows.extend(cursor.fetchall())
        return rows


def upsert(
    table: str,
    columns: Sequence[tuple[str, str]],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    add: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[tuple]:
    """Insert `rows` (tuples in `columns` order; `columns` are (name, PostgreSQL type), type
    `jsonb` takes JSON text) or, on a key conflict, overwrite the non-key columns; columns named in
    `add` are added to the stored value instead. On PostgreSQL returns the `returning` columns of
    every written row; elsewhere returns []."""
    if not rows:
        return []
    names = [name for name, _ in columns]
    updates = ", ".join(
        f"{name} = {table}.{name} + EXCLUDED.{name}" if name in add else f"{name} = EXCLUDED.{name}"
        for name in names
        if name not in keys
    )
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    if is_postgresql():
        with raw_cursor() as cursor:
            arrays = ", ".join(
                f"%b::{'text' if kind == 'jsonb' else kind}[]" for _, kind in columns
            )
            select = ", ".join(
                f"{name}::jsonb" if kind == "jsonb" else name for name, kind in columns
            )
            tail = f" RETURNING {', '.join(returning)}" if returning else ""
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(names)}) "  # noqa: S608
                f"SELECT {select} FROM unnest({arrays}) AS u({', '.join(names)}) "
                f"{conflict}{tail}",
                [list(column) for column in zip(*rows, strict=True)],
            )
            return cursor.fetchall() if returning else []
    with connection.cursor() as cursor:
        marks = ", ".join(["%s"] * len(names))
        updates = updates.replace("EXCLUDED.", "excluded.")
        cursor.executemany(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
            [list(row) for row in rows],
        )
        return []
