"""Exactly-once consumption of the events table, batch after batch, past a durable watermark.

One database transaction per batch: lock the consumer's watermark row, read the events with
id > watermark in id order (at most FEATURES_BATCH_SIZE), apply them to the feature tables with a
few set-at-a-time upserts, advance the watermark, commit. A worker killed anywhere in that leaves
either the whole batch or none of it. Redis is written after the commit from the committed values,
and its own marker (`feat:wm:<consumer>`) says how far that got; a run that finds the marker behind
re-publishes the missing range, and one that finds it absent (Redis lost its data) rebuilds all.

Ids are handed out before commit, so on PostgreSQL a lower id can become visible after a higher
one. A hole in the ids therefore holds the watermark back until it fills, unless it is known to be
permanent: nothing else was in progress when the batch looked (then every id below what it saw is
final), or it has stayed open for FEATURES_GAP_TIMEOUT_SECONDS (a rolled-back or deleted event).
SQLite runs one writer at a time, so there ids become visible in order.

One run per consumer at a time (a PostgreSQL advisory lock, or a file lock on the embedded
default), so Redis writes of consecutive batches never cross.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from . import hotstore
from .bulk import epoch_sql, is_postgresql, raw_cursor
from .models import JobRun, Watermark

logger = logging.getLogger(__name__)

# (id, user id, item id or None, type, unix time of the event, unix time it was ingested)
EventRow = tuple[int, int, int | None, str, float, float]

# Beyond this many events behind, Redis is rebuilt from the tables instead of replayed.
_REPUBLISH_LIMIT = 2_000_000
_LOCK_WAIT_SECONDS = 15.0


class Consumer(Protocol):
    name: str

    def apply(self, rows: list[EventRow], after: int, upto: int) -> Any:
        """Inside the batch transaction: fold `rows` (every visible event in (after, upto]) into
        the tables; return what `publish` needs."""

    def prepare(self, outcome: Any) -> Any:
        """After commit: the database lookups the Redis writes of `outcome` need."""

    def publish(self, store: redis.Redis, prepared: Any) -> None:
        """Write what `prepare` returned to Redis. May run in another thread: no database."""

    def republish(self, store: redis.Redis, after: int, upto: int) -> None:
        """Write to Redis, from the tables, everything events (after, upto] changed."""

    def rebuild_hot(self, store: redis.Redis) -> None:
        """Replace this consumer's Redis keys with what the tables hold."""

    def reset(self) -> None:
        """Inside a transaction holding the lock: empty this consumer's tables."""


@dataclass
class BatchResult:
    rows: list[EventRow] = field(default_factory=list)
    watermark_from: int = 0
    watermark_to: int = 0
    caught_up: bool = True
    outcome: Any = None


def events_fetch(after: int, limit: int, upto: int | None = None) -> list[EventRow]:
    """Events with id > `after` (and <= `upto`), in id order, at most `limit`."""
    bound = " AND id <= %s" if upto is not None else ""
    params: list[Any] = [after] + ([upto] if upto is not None else []) + [limit]
    sql = (
        f"SELECT id, user_id, item_id, type, {epoch_sql('timestamp')}, "  # noqa: S608
        f"{epoch_sql('ingested_at')} FROM events_event WHERE id > %s{bound} "
        "ORDER BY id LIMIT %s"
    )
    if is_postgresql():
        with raw_cursor() as cursor:
            cursor.execute(sql, params, binary=True)
            return cursor.fetchall()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def events_highest_id() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT MAX(id) FROM events_event")
        return cursor.fetchone()[0] or 0


def _visibility(after: int) -> tuple[bool, int]:
    """(busy, highest): whether another transaction of this database holds a transaction id
    (PostgreSQL; then an id below what is visible may still appear), and the highest event id
    visible now. Must run before the events are read. Other feature runs (they hold a features
    advisory lock) never write events and do not count. Ingestion takes its transaction id
    before its event ids (its statement claims idempotency keys first), so an ingest in flight
    is always seen here. pg_locks and pg_stat_activity.datname are readable by any role."""
    with connection.cursor() as cursor:
        if not is_postgresql():
            cursor.execute("SELECT MAX(id) FROM events_event WHERE id > %s", [after])
            return False, cursor.fetchone()[0] or 0
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted "
            "AND a.datname = current_database() AND l.pid <> pg_backend_pid() "
            "AND l.pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
            "AND classid = 0 AND objid = ANY(%s) AND granted)), "
            "(SELECT MAX(id) FROM events_event WHERE id > %s)",
            [list(_ADVISORY_KEYS.values()), after],
        )
        busy, highest = cursor.fetchone()
        return busy, highest or 0


def _next_rows(after: int, limit: int) -> tuple[list[EventRow], int]:
    """Events in (after, after + limit], or from the next existing id when that range is empty
    (a long hole: retention, a big rollback): a range on the id index, never a scan that the
    planner might pick for `id > x ORDER BY id LIMIT n`. Also returns the range's end."""
    rows = events_fetch(after, limit, after + limit)
    if rows:
        return rows, after + limit
    with connection.cursor() as cursor:
        cursor.execute("SELECT MIN(id) FROM events_event WHERE id > %s", [after])
        first = cursor.fetchone()[0]
    if first is None:
        return [], after + limit
    return events_fetch(first - 1, limit, first - 1 + limit), first - 1 + limit


def _batch(consumer: Consumer, limit: int) -> BatchResult:
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            if is_postgresql():
                # A crash may lose the last batches' commits, but whole: tables and watermark go
                # back together and those events are folded again. Redis then runs ahead of the
                # tables, which the next run sees (marker > watermark) and rebuilds.
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
                # The fold sorts and hashes a whole batch: keep it in memory.
                cursor.execute("SET LOCAL work_mem = '64MB'")
            # A write first: on PostgreSQL it locks the row, on SQLite it takes the write lock.
            cursor.execute(
                "UPDATE features_watermark SET updated_at = %s WHERE consumer = %s",
                [now, consumer.name],
            )
        mark = Watermark.objects.get(pk=consumer.name)
        postgresql = is_postgresql()
        busy, highest = _visibility(mark.last_event_id)
        quiet_bound = 0 if busy else highest
        fetched, range_end = (
            _next_rows(mark.last_event_id, limit) if highest > mark.last_event_id else ([], 0)
        )
        result = BatchResult(watermark_from=mark.last_event_id, caught_up=range_end >= highest)
        expected = mark.last_event_id + 1
        gap_changed = False
        kept: list[EventRow] = []
        for row in fetched:
            if row[0] != expected and postgresql:
                timed_out = (
                    mark.gap_event_id == expected
                    and mark.gap_seen_at is not None
                    and (now - mark.gap_seen_at).total_seconds()
                    >= settings.FEATURES_GAP_TIMEOUT_SECONDS
                )
                if not (row[0] <= quiet_bound or timed_out):
                    if mark.gap_event_id != expected:
                        mark.gap_event_id, mark.gap_seen_at = expected, now
                        gap_changed = True
                    result.caught_up = True
                    break
                logger.info("features %s: skipping ids %d..%d", consumer.name, expected, row[0] - 1)
            kept.append(row)
            expected = row[0] + 1
        if kept:
            result.outcome = consumer.apply(kept, mark.last_event_id, kept[-1][0])
            mark.last_event_id = kept[-1][0]
            if mark.gap_event_id is not None and mark.gap_event_id <= mark.last_event_id:
                mark.gap_event_id = mark.gap_seen_at = None
            gap_changed = True
        if gap_changed:
            mark.save(update_fields=["last_event_id", "gap_event_id", "gap_seen_at"])
        result.rows = kept
        result.watermark_to = mark.last_event_id
    return result


_ADVISORY_KEYS: dict[str, int] = {}


def _advisory_key(name: str) -> int:
    # One 32-bit key (classid 0, objid = key) per consumer; every consumer is registered up
    # front so `_visibility` knows them all.
    key = _ADVISORY_KEYS.get(name)
    if key is None:
        key = _ADVISORY_KEYS[name] = zlib.crc32(f"features:{name}".encode()) & 0x7FFFFFFF
    return key


for _name in ("activity", "items", "neighbours"):
    _advisory_key(_name)


def _acquire(
    try_once: Callable[[], bool], wait: float, when_busy: Callable[[], None] | None
) -> bool:
    """Try `try_once` every 20 ms for `wait` seconds, then `when_busy` once (see consumer_lock)."""
    deadline = time.monotonic() + wait
    while True:
        if try_once():
            return True
        if time.monotonic() >= deadline:
            if when_busy is None:
                return False
            when_busy()
            when_busy = None
            continue
        time.sleep(0.02)


@contextlib.contextmanager
def consumer_lock(
    name: str, wait: float = _LOCK_WAIT_SECONDS, when_busy: Callable[[], None] | None = None
) -> Iterator[bool]:
    """Hold the consumer's run lock (yields False when it stayed taken for `wait` seconds).
    `when_busy` is called when that wait ran out, to leave the holder a note; then the lock is
    tried once more, so the note cannot miss a holder that let go meanwhile. Released by the
    operating system or PostgreSQL if the process dies."""
    if is_postgresql():
        key = _advisory_key(name)

        def try_lock() -> bool:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
                return bool(cursor.fetchone()[0])

        got = _acquire(try_lock, wait, when_busy)
        try:
            yield got
        finally:
            if got:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        return
    path = settings.VAR_DIR / f"features-{name}.lock"
    with open(path, "a+") as handle:

        def try_flock() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        got = _acquire(try_flock, wait, when_busy)
        try:
            yield got
        finally:
            if got:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _hot_catch_up(consumer: Consumer, store: redis.Redis, watermark: int) -> None:
    """Make Redis agree with the tables up to `watermark` (held under the consumer lock). Keys
    in another layout than this code writes (see hotstore.LAYOUTS) count as absent."""
    layout = hotstore.LAYOUTS.get(consumer.name)
    raw, found_layout = store.mget(
        hotstore.marker_key(consumer.name), hotstore.layout_key(consumer.name)
    )
    marker = int(raw) if raw is not None else None
    if layout is not None and found_layout != str(layout).encode():
        marker = None
    if marker == watermark:
        return
    if marker is None or marker > watermark or watermark - marker > _REPUBLISH_LIMIT:
        logger.warning(
            "features %s: rebuilding Redis (marker %s, db %d)", consumer.name, marker, watermark
        )
        consumer.rebuild_hot(store)
    else:
        consumer.republish(store, marker, watermark)
    pipe = store.pipeline(transaction=False)
    pipe.set(hotstore.marker_key(consumer.name), watermark)
    if layout is not None:
        pipe.set(hotstore.layout_key(consumer.name), layout)
    pipe.execute()


def _hot_back(consumer: Consumer, watermark: int) -> redis.Redis | None:
    """Redis, if it answers again, brought up to `watermark` (held under the consumer lock), so
    that a run which started without it, or lost it, publishes its next batches. Without this a
    run that follows steady ingestion left Redis empty until its budget was spent (the chaos
    suite's Redis recovery took 8 s, 20 s at worst, instead of a batch)."""
    store = hotstore.answering("job")
    if store is None:
        return None
    try:
        _hot_catch_up(consumer, store, watermark)
    except redis.RedisError as exc:
        hotstore.mark_down(exc)
        return None
    return store


def consumer_run(
    consumer: Consumer,
    *,
    trigger: str,
    budget: float | None = None,
    reset: bool = False,
    batch_size: int | None = None,
    lock_wait: float = _LOCK_WAIT_SECONDS,
    when_busy: Callable[[], None] | None = None,
    follow: bool = False,
    pace: float = 0.0,
) -> JobRun:
    """Process events past the watermark until caught up or `budget` seconds have passed; one
    recorded JobRun (SKIPPED when another run held the consumer's lock for `lock_wait` seconds;
    see `consumer_lock` for `when_busy`). Caught up: a batch reached what was visible when it
    began; with `follow`, a batch that found nothing (under steady ingestion the run keeps
    folding what arrived during its last batch, each batch's Redis writes overlapping the next
    fold, until the budget is spent); with `pace` too, a batch that caught up is followed by the
    next one no sooner than `pace` seconds after it began (more events a batch). `reset` first
    empties the consumer's tables and its watermark (a full recompute from the events table)."""
    budget = settings.FEATURES_RUN_BUDGET_SECONDS if budget is None else budget
    limit = batch_size or settings.FEATURES_BATCH_SIZE
    Watermark.objects.get_or_create(consumer=consumer.name)
    run = JobRun.objects.create(consumer=consumer.name, trigger=trigger, started_at=timezone.now())
    started = time.monotonic()
    try:
        with consumer_lock(consumer.name, lock_wait, when_busy) as locked:
            if not locked:
                run.status = JobRun.Status.SKIPPED
                return run
            # We hold the lock, so any other run still marked running died without a word.
            JobRun.objects.filter(
                consumer=consumer.name, status=JobRun.Status.RUNNING, id__lt=run.id
            ).update(status=JobRun.Status.ABANDONED, finished_at=timezone.now())
            if reset:
                _reset(consumer)
            store = hotstore.client("job")
            watermark = Watermark.objects.get(pk=consumer.name).last_event_id
            run.watermark_from = run.watermark_to = watermark
            if store is not None:
                try:
                    _hot_catch_up(consumer, store, watermark)
                except redis.RedisError as exc:
                    hotstore.mark_down(exc)
                    store = None
            publisher = _Publisher(consumer, store)
            try:
                while True:
                    began = time.monotonic()
                    result = _batch(consumer, limit)
                    run.watermark_to = result.watermark_to
                    if result.rows:
                        committed = time.time()
                        run.batches += 1
                        run.events_processed += len(result.rows)
                        age = committed - min(row[5] for row in result.rows)
                        run.max_event_age_seconds = max(run.max_event_age_seconds or 0.0, age)
                        publisher.submit(result)
                    done = result.caught_up and not (follow and result.rows)
                    if done or time.monotonic() - started >= budget:
                        break
                    if publisher.store is None:
                        publisher.store = _hot_back(consumer, run.watermark_to)
                    if pace and result.caught_up:  # a backlog is folded without a pause
                        time.sleep(max(0.0, min(began + pace, started + budget) - time.monotonic()))
            finally:
                publisher.close()  # the lock is held until Redis has every committed batch
            run.backlog_events = max(0, events_highest_id() - run.watermark_to)
            run.status = JobRun.Status.SUCCEEDED
            run.finished_at = timezone.now()
            run.save()  # before the lock goes, so the next holder never sees it running
        return run
    except Exception:
        run.status = JobRun.Status.FAILED
        run.error = traceback.format_exc()[-4000:]
        raise
    finally:
        if run.finished_at is None:
            run.finished_at = timezone.now()
            with contextlib.suppress(Exception):
                run.save()


class _Publisher:
    """Writes each committed batch to Redis in a background thread while this thread folds the
    next one (the fold mostly waits for PostgreSQL; the writes are Python and Redis work). One
    batch in flight, in watermark order, and the marker moves after its batch's writes. After a
    Redis failure nothing more is written this run: the marker stays behind and the next run
    re-publishes from the tables. Database lookups stay in this thread (`Consumer.prepare`)."""

    def __init__(self, consumer: Consumer, store: redis.Redis | None) -> None:
        self.consumer, self.store = consumer, store
        self.pending: Future | None = None
        self.pool: ThreadPoolExecutor | None = None

    def submit(self, result: BatchResult) -> None:
        if self.store is None:
            return
        prepared = self.consumer.prepare(result.outcome)
        self.wait()
        if self.store is None:
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="features-publish")
        self.pending = self.pool.submit(self._write, self.store, prepared, result.watermark_to)

    def _write(self, store: redis.Redis, prepared: Any, watermark: int) -> None:
        self.consumer.publish(store, prepared)
        store.set(hotstore.marker_key(self.consumer.name), watermark)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            pending.result()
        except redis.RedisError as exc:
            hotstore.mark_down(exc)
            self.store = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _reset(consumer: Consumer) -> None:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE features_watermark SET last_event_id = 0, gap_event_id = NULL, "
                "gap_seen_at = NULL, updated_at = %s WHERE consumer = %s",
                [timezone.now(), consumer.name],
            )
        consumer.reset()
    store = hotstore.client("job")
    if store is not None:
        with contextlib.suppress(redis.RedisError):
            store.delete(hotstore.marker_key(consumer.name))


def runs_prune(*, now: Any = None) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.FEATURES_RUN_RETENTION_DAYS)
    deleted, _ = JobRun.objects.filter(started_at__lt=cutoff).delete()
    return deleted
