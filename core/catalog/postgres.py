"""A psycopg cursor with server-side binding, for the bulk statements of the ingest path.

Django's PostgreSQL backend binds parameters on the client (it quotes them into the SQL text),
which for arrays of thousands of values costs milliseconds of pure Python per statement. This
cursor sends the arrays as binary parameters (`%b`), dumped in C. Same connection, so same
transaction as the ORM around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection


@contextmanager
def pg_cursor() -> Iterator[psycopg.Cursor]:
    """As Django's own cursors: a connection the server dropped (a restart) is replaced before
    use (CONN_HEALTH_CHECKS), and an error through this cursor marks the connection, so that it
    is closed at the end of the request rather than failing every request for CONN_MAX_AGE."""
    if not connection.in_atomic_block:
        connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor
