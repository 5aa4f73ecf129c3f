"""Impressions (each served page: items, positions, model) written off the request path.

A request hands its row to this process's writer and answers; the writer inserts what has
gathered every RECOMMENDATIONS_IMPRESSION_FLUSH_MS in one statement (a page served again
overwrites its row). A request no longer waits for a database round trip and a commit (about
1 ms, more when the disk is slow). What this costs: a web process killed with SIGKILL loses the
impressions of its last flush interval (a graceful stop writes them), and attribution reports
see a page that much later. With the database down, rows wait (at most
RECOMMENDATIONS_IMPRESSION_BUFFER, then the oldest are dropped and counted in
`recommender_impressions_dropped_total`): an impression lost is better than a storefront without
recommendations. RECOMMENDATIONS_IMPRESSION_FLUSH_MS=0 writes each row in the request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import close_old_connections, connection

from core.catalog.postgres import pg_cursor
from core.system.metrics import IMPRESSIONS_DROPPED

from .models import Impression

logger = logging.getLogger(__name__)

UPDATE_FIELDS = ["surface", "user_external_id", "model_name", "model_version", "source",
                 "item_ids", "offset"]  # fmt: skip
_BATCH = 2000


class ImpressionRow(NamedTuple):
    """A served page as the request hands it over: a tuple, not a model instance (building one
    and having the ORM render it cost about 55 us a row, in the web process)."""

    recommendation_id: str
    page: int
    surface: str
    source: str
    user_external_id: str = ""
    model_name: str = ""
    model_version: int | None = None
    item_ids: Sequence[str] = ()
    offset: int = 0
    served_at: float = 0.0  # Unix time; 0 = when written


# Every column from an array, bound as a binary parameter (dumped in C: Django's client-side
# binding quotes each element with a regular expression), one statement for the whole batch.
_INSERT = """
INSERT INTO {table} (recommendation_id, page, surface, source, user_external_id, model_name,
                     model_version, item_ids, "offset", created_at)
SELECT * FROM unnest(%b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[],
                     %b::bigint[], %b::text[]::jsonb[], %b::int[], %b::timestamptz[])
ON CONFLICT (recommendation_id, page) DO UPDATE SET {updates}
"""


def write(rows: Iterable[ImpressionRow]) -> int:
    """Insert rows now, one statement; a (list, page) given twice keeps the last."""
    unique = list({(row.recommendation_id, row.page): row for row in rows}.values())
    if not unique:
        return 0
    now = time.time()
    served = [datetime.fromtimestamp(row.served_at or now, UTC) for row in unique]
    if connection.vendor != "postgresql":
        Impression.objects.bulk_create(
            [_model(row, at) for row, at in zip(unique, served, strict=True)],
            update_conflicts=True,
            unique_fields=["recommendation_id", "page"],
            update_fields=UPDATE_FIELDS,
        )
        return len(unique)
    columns: list[list[Any]] = [list(column) for column in zip(*unique, strict=True)]
    columns[7] = [orjson.dumps(list(ids)).decode() for ids in columns[7]]
    columns[9] = served
    updates = ", ".join(f'"{name}" = EXCLUDED."{name}"' for name in UPDATE_FIELDS)
    with pg_cursor() as cursor:
        cursor.execute(_INSERT.format(table=Impression._meta.db_table, updates=updates), columns)
    return len(unique)


def _model(row: ImpressionRow, served_at: datetime) -> Impression:
    fields = row._asdict()
    del fields["served_at"]
    return Impression(**{**fields, "item_ids": list(row.item_ids)}, created_at=served_at)


class _Writer:
    def __init__(self) -> None:
        self._rows: deque[ImpressionRow] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def record(self, row: ImpressionRow) -> None:
        with self._lock:
            self._rows.append(row)
            overflow = len(self._rows) - settings.RECOMMENDATIONS_IMPRESSION_BUFFER
            for _ in range(max(0, overflow)):
                self._rows.popleft()
            if self._pid != os.getpid():  # first use in this process (or after a fork)
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
                self._thread.start()
        if overflow > 0:
            IMPRESSIONS_DROPPED.inc(overflow)
            logger.warning("impression buffer full: dropped %d", overflow)

    def flush(self) -> int:
        """Write everything buffered now (the writer thread, a graceful exit, tests)."""
        written = 0
        while True:
            with self._lock:
                batch = [self._rows.popleft() for _ in range(min(_BATCH, len(self._rows)))]
            if not batch:
                return written
            try:
                written += write(batch)
            except Exception:
                # Keep them for the next round (the database may be restarting).
                with self._lock:
                    self._rows.extendleft(reversed(batch))
                raise

    def pending(self) -> int:
        return len(self._rows)

    def forget(self, user_external_id: str) -> None:
        with self._lock:
            kept = [row for row in self._rows if row.user_external_id != user_external_id]
            self._rows = deque(kept)

    def _run(self) -> None:
        interval = settings.RECOMMENDATIONS_IMPRESSION_FLUSH_MS / 1000
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                if self._rows:
                    self.flush()
                    close_old_connections()  # CONN_MAX_AGE, as after a request
            except Exception:
                logger.warning("could not write impressions; retrying", exc_info=True)
                connection.close()
                self._wake.wait(min(5.0, interval * 10))


_writer = _Writer()


def record(row: ImpressionRow) -> None:
    """Log one served page: in this request when the flush interval is 0, else by the writer."""
    if settings.RECOMMENDATIONS_IMPRESSION_FLUSH_MS <= 0:
        write([row])
    else:
        _writer.record(row)


def flush() -> int:
    return _writer.flush()


def pending() -> int:
    return _writer.pending()


def forget(user_external_id: str) -> None:
    """Drop a forgotten shopper's impressions not written yet."""
    _writer.forget(user_external_id[:255])


@atexit.register
def _flush_at_exit() -> None:
    if _writer.pending():
        try:
            _writer.flush()
        except Exception:
            logger.exception("could not write %d impressions at exit", _writer.pending())
