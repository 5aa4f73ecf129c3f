"""Feature pipeline writes: run the consumers, sync catalog availability to the hot store, rebuild,
and erase a forgotten shopper. Tasks and commands call these; nothing here talks to the broker
except `features_refresh_trigger` (after commit, never raising)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.utils import timezone

from core.catalog.models import Item, User

from . import hotstore
from .activity import ActivityConsumer, ItemsConsumer
from .models import JobRun, NeighbourContext, UserFeatures, Watermark
from .neighbours import NeighboursConsumer
from .pipeline import Consumer, consumer_run, runs_prune

logger = logging.getLogger(__name__)

CONSUMERS: dict[str, Consumer] = {
    "activity": ActivityConsumer(),
    "items": ItemsConsumer(),
    "neighbours": NeighboursConsumer(),
}
# Set while a refresh is queued and not yet started: later commits need not enqueue another.
REFRESH_PENDING_KEY = "features:refresh-pending"
_PENDING_SECONDS = 10
# Left by a refresh that found another run holding the lock (instead of keeping a worker process
# waiting for it): the holder queues one more refresh when it lets go. Until that one starts,
# commits need not enqueue another (the pending key is set again).
REFRESH_AGAIN_KEY = "features:refresh-again"
_AGAIN_SECONDS = 60
# A triggered items run that caught up starts its next batch no sooner than this after the last
# began. Item counts and trends are written once per item and batch, and a few popular items are
# in every batch (batches of 5,000 events touched 2,500 items, of 30,000 only 5,200), so small
# batches cost the items' fold up to three times the CPU an event; a second's wait costs their
# freshness at most a second (the shoppers' fold, the fresh path, never waits).
ITEMS_PACE = 1.0
# Items updated this long before the last catalog sync are read again (commit order is not
# updated_at order).
_CATALOG_OVERLAP = timedelta(seconds=60)


def features_refresh(*, trigger: str, budget: float | None = None, handoff: bool = False) -> JobRun:
    """Bring user and item features up to date with the events table; returns the shoppers' run
    (the fresh path). With `handoff` (the triggered and periodic runs), a run in progress is not
    waited for: it is asked to go again when it lets go (`features_refresh_again`), and this one
    is SKIPPED; each run goes on folding what arrives meanwhile until a batch finds nothing or
    its budget is spent; and the items' run goes in a thread beside the shoppers' (their own
    database session and lock), so on a busy machine the shoppers' fold does not wait for the
    items' one, and the two use the CPU the machine has, as two processes of work would."""
    if not handoff:
        run = consumer_run(CONSUMERS["activity"], trigger=trigger, budget=budget)
        consumer_run(CONSUMERS["items"], trigger=trigger, budget=budget)
        return run
    options: dict[str, Any] = {
        "trigger": trigger,
        "budget": budget,
        "lock_wait": 0.0,
        "when_busy": _ask_again,
        "follow": True,
    }
    items = _items_thread().submit(
        _run_in_thread, CONSUMERS["items"], {**options, "pace": ITEMS_PACE}
    )
    try:
        run = consumer_run(CONSUMERS["activity"], **options)
    finally:
        items_run = items.result()  # waited for even when the shoppers' run failed
    folded = items_run.status == JobRun.Status.SUCCEEDED and items_run.events_processed
    if folded and items_run.backlog_events:
        _ask_again()  # the items stopped with more to fold (their budget): go again
    return run


# The items' runs beside the shoppers' go on one thread kept for the process's life, so that its
# database and cache connections last from one refresh to the next, as the main thread's do
# (CONN_MAX_AGE). A new thread per refresh opened a PostgreSQL connection (a backend process) and
# a Redis connection every time: at a few events a second, a refresh a commit, most of the
# worker's work.
_items_executor: ThreadPoolExecutor | None = None
_items_executor_pid = 0
_items_executor_lock = threading.Lock()


def _items_thread() -> ThreadPoolExecutor:
    global _items_executor, _items_executor_pid
    with _items_executor_lock:
        if _items_executor is None or _items_executor_pid != os.getpid():  # new, or forked
            _items_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="features-items")
            _items_executor_pid = os.getpid()
        return _items_executor


def items_thread_stop() -> None:
    """Close the items thread's database connection and end the thread (the test suite, before
    its database is dropped; a later refresh starts another)."""
    global _items_executor
    with _items_executor_lock:
        executor, _items_executor = _items_executor, None
    if executor is not None:
        executor.submit(connections.close_all).result()  # run there: that thread's connections
        executor.shutdown(wait=True)


def _run_in_thread(consumer: Consumer, options: dict[str, Any]) -> JobRun:
    """`consumer_run` on the items thread. Its connection is handled as a request's is: closed
    before and after when unusable or older than CONN_MAX_AGE, else kept."""
    connection.close_if_unusable_or_obsolete()
    try:
        return consumer_run(consumer, **options)
    finally:
        connection.close_if_unusable_or_obsolete()


def _ask_again() -> None:
    """Leave the run in progress a note to go again when it lets go. With the cache down no note
    can be left; the refresh is skipped all the same, and beat's sweep (every
    FEATURES_SWEEP_SECONDS) does its work. Waiting for the lock instead kept a worker process
    busy for up to 15 s, and with two of them the shoppers' fold could wait that long: the chaos
    suite's Redis fault held Redis's rebuild back 7 s after it came back."""
    try:
        cache.set(REFRESH_AGAIN_KEY, 1, timeout=_AGAIN_SECONDS)
        cache.add(REFRESH_PENDING_KEY, 1, timeout=_PENDING_SECONDS)
    except Exception:
        logger.warning("features: could not leave the running refresh a note; the sweep will go")


def features_refresh_again(run: JobRun) -> bool:
    """After a refresh (its lock released): whether another should be queued: it stopped with a
    backlog, or a refresh skipped while it ran asked for one."""
    if run.status != JobRun.Status.SUCCEEDED:
        return False
    try:
        asked = bool(cache.delete(REFRESH_AGAIN_KEY))
    except Exception:  # cache down: the sweep catches up
        asked = False
    return asked or bool(run.events_processed and run.backlog_events)


def features_neighbours_refresh(*, trigger: str, budget: float | None = None) -> JobRun:
    """Bring item co-occurrence neighbours up to date with the events table."""
    return consumer_run(CONSUMERS["neighbours"], trigger=trigger, budget=budget)


def features_activity_behind() -> bool:
    """Whether the fresh path (the activity consumer) is more than a tenth of a batch behind the
    events table (5,000 events by default; a run that keeps up stays below that between its
    batches): then the periodic neighbours job waits for a later beat, so on a busy machine its
    heavier folds do not take the CPU the per-shopper features need to keep up."""
    from .pipeline import events_highest_id

    mark = Watermark.objects.filter(pk="activity").values_list("last_event_id", flat=True).first()
    return events_highest_id() - (mark or 0) > settings.FEATURES_BATCH_SIZE // 10


def features_refresh_trigger() -> None:
    """After an ingest commits: enqueue one refresh unless one is already waiting. Never raises
    (the events are stored; the sweep catches up whatever a lost trigger missed)."""
    if not settings.FEATURES_TRIGGER_ON_COMMIT:
        return
    try:
        if not cache.add(REFRESH_PENDING_KEY, 1, timeout=_PENDING_SECONDS):
            return
        from .tasks import features_refresh_task

        enqueue_now(features_refresh_task, trigger="on_commit")
    except Exception:  # broker or cache down: the sweep catches up
        logger.warning("features: could not enqueue a refresh", exc_info=True)


def enqueue_now(task: Any, **kwargs: Any) -> None:
    """Send `task` without the broker retries of a default `apply_async` (seconds when the
    broker is down): for the request path. Raises when the broker is unreachable."""
    connection = _broker_connection()
    try:
        task.apply_async(kwargs=kwargs, retry=False, connection=connection)
    except Exception:
        _local.__dict__.pop("connection", None)
        connection.release()
        raise


_local = threading.local()


def _broker_connection() -> Any:
    """This thread's broker connection for triggers. It gives up at once when the broker is
    down (the default connection retries for seconds, and this runs on the request path)."""
    pid = os.getpid()
    found = getattr(_local, "connection", None)
    if found is None or getattr(_local, "pid", None) != pid:
        from recommender.celery import app

        options = {**(app.conf.broker_transport_options or {}), "max_retries": 0}
        found = _local.connection = app.connection_for_write(transport_options=options)
        _local.pid = pid
    return found


def features_sweep() -> dict[str, Any]:
    """The periodic safety net: catalog availability to the hot store, a refresh (whatever the
    on-commit triggers missed, e.g. while the broker was down), old job runs pruned."""
    catalog = features_catalog_sync()
    run = features_refresh(trigger="sweep", handoff=True)
    if features_refresh_again(run):
        from .tasks import features_refresh_task

        features_refresh_task.apply_async(kwargs={"trigger": "backlog"})
    pruned = runs_prune()
    return {"catalog": catalog, "events": run.events_processed, "pruned_runs": pruned}


def features_catalog_sync(*, full: bool = False) -> dict[str, int]:
    """Make the hot set of unavailable items agree with the catalog: everything on the first run
    (or `full`), else the items updated since the last sync. Idempotent (SADD/SREM of what the
    database says)."""
    store = hotstore.client("job")
    if store is None:
        return {"added": 0, "removed": 0}
    mark, _ = Watermark.objects.get_or_create(consumer="catalog")
    started = timezone.now()
    try:
        marker = store.get(hotstore.marker_key("catalog"))
        if full or marker is None or mark.synced_at is None:
            unavailable = list(
                Item.objects.filter(_unavailable_q()).values_list("external_id", flat=True)
            )
            staging = f"{hotstore.UNAVAILABLE}:rebuild"
            pipe = store.pipeline(transaction=True)
            pipe.delete(staging)
            for start in range(0, len(unavailable), 10_000):
                pipe.sadd(staging, *unavailable[start : start + 10_000])
            if unavailable:
                pipe.rename(staging, hotstore.UNAVAILABLE)
            else:
                pipe.delete(hotstore.UNAVAILABLE)
            pipe.set(hotstore.marker_key("catalog"), started.isoformat())
            hotstore.unavailable_changed(pipe)
            pipe.execute()
            result = {"added": len(unavailable), "removed": 0}
        else:
            changed = Item.objects.filter(updated_at__gte=mark.synced_at - _CATALOG_OVERLAP)
            gone = [ext for ext, out in _availability(changed) if out]
            back = [ext for ext, out in _availability(changed) if not out]
            hotstore.unavailable_update(store, add=gone, remove=back)
            result = {"added": len(gone), "removed": len(back)}
    except redis.RedisError as exc:
        hotstore.mark_down(exc)
        return {"added": 0, "removed": 0}
    Watermark.objects.filter(pk="catalog").update(synced_at=started)
    return result


def _unavailable_q() -> Any:
    from django.db.models import Q

    return Q(deleted_at__isnull=False) | Q(available=False)


def _availability(items: Any) -> list[tuple[str, bool]]:
    return [
        (ext, deleted_at is not None or not available)
        for ext, deleted_at, available in items.values_list(
            "external_id", "deleted_at", "available"
        )
    ]


def features_items_removed(*, item_ids: Collection[int]) -> None:
    """After a committed catalog change took items out: add them to the hot unavailable set at
    once (re-checked against the database: the hook runs after commit, a later change may have
    brought one back). Never raises."""
    try:
        store = hotstore.client("serve")
        if store is None or not item_ids:
            return
        out = [
            ext
            for ext, is_out in _availability(Item.objects.filter(id__in=list(item_ids)))
            if is_out
        ]
        if out:
            hotstore.unavailable_update(store, add=out)
    except redis.RedisError as exc:
        hotstore.mark_down(exc)
    except Exception:
        logger.warning("features: could not mark items unavailable", exc_info=True)


def features_user_erase(user_pk: int) -> int:
    """Right to be forgotten: a shopper's feature rows (and, after commit, their hot copy). Runs
    inside `user_forget`'s transaction; waits for a running batch so it cannot write them back.
    Their contribution to anonymous item counts and pairs stays."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE features_watermark SET updated_at = %s WHERE consumer IN (%s, %s)",
            [timezone.now(), "activity", "neighbours"],
        )
    external_id = User.objects.filter(pk=user_pk).values_list("external_id", flat=True).first()
    deleted, _ = UserFeatures.objects.filter(user_id=user_pk).delete()
    contexts, _ = NeighbourContext.objects.filter(user_id=user_pk).delete()
    if external_id is not None:
        transaction.on_commit(lambda: _hot_user_forget(external_id))
    return deleted + contexts


def _hot_user_forget(external_id: str) -> None:
    store = hotstore.client("job")
    if store is None:
        return
    try:
        store.delete(hotstore.user_key(external_id), hotstore.history_key(external_id))
    except redis.RedisError as exc:
        hotstore.mark_down(exc)


def features_rebuild(
    *, recompute: bool = False, trigger: str = "rebuild", force: bool = True
) -> dict[str, Any]:
    """Rebuild Redis from PostgreSQL (`manage.py rebuild_features`). With `recompute`, first
    recompute every feature table from the events table (from watermark 0). Without `force`,
    only what Redis lost (a consumer whose marker is missing) is rebuilt."""
    report: dict[str, Any] = {}
    store = hotstore.client("job")
    for name, consumer in CONSUMERS.items():
        if store is not None and force and not recompute:
            with contextlib.suppress(redis.RedisError):
                store.delete(hotstore.marker_key(name))  # the run below rebuilds from the tables
        run = consumer_run(consumer, trigger=trigger, budget=float("inf"), reset=recompute)
        report[name] = {"status": str(run.status), "events": run.events_processed}
    report["catalog"] = features_catalog_sync(full=force)
    return report


def features_status() -> list[dict[str, Any]]:
    """Per consumer: watermark, highest event id, whether Redis agrees."""
    from .pipeline import events_highest_id

    highest = events_highest_id()
    store = hotstore.client("serve")
    status = []
    for name in CONSUMERS:
        mark = Watermark.objects.filter(pk=name).first()
        marker = None
        if store is not None:
            with contextlib.suppress(redis.RedisError):
                raw = store.get(hotstore.marker_key(name))
                marker = int(raw) if raw is not None else None
        status.append(
            {
                "consumer": name,
                "watermark": mark.last_event_id if mark else 0,
                "highest_event_id": highest,
                "redis_marker": marker,
            }
        )
    return status
