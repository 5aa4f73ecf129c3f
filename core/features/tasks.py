"""Celery entry points of the feature pipeline. Thin: each calls one service. All are safe to run
twice (the watermark makes a redelivered batch a no-op), hence `acks_late`."""

from __future__ import annotations

import logging

from celery import shared_task
from django.core.cache import cache
from django.db import OperationalError

from . import services

logger = logging.getLogger(__name__)

# Transient database trouble (a restart, a lock timeout): retry a few times, backing off.
_RETRY = {"autoretry_for": (OperationalError,), "max_retries": 3, "retry_backoff": True}


@shared_task(
    name="features.refresh",
    acks_late=True,
    **_RETRY,
    ignore_result=True,
    time_limit=300,
    soft_time_limit=240,
)
def features_refresh_task(trigger: str = "task") -> dict:
    """Process events past the activity watermark. Enqueued after ingest commits (debounced) and
    re-enqueued by itself while a backlog remains."""
    # Cleared before reading events: a commit after this point enqueues another refresh. With
    # the cache down it stays as it is (and expires): the refresh runs all the same.
    try:
        cache.delete(services.REFRESH_PENDING_KEY)
    except Exception:
        logger.warning("features: the cache is down; refreshing without clearing the pending key")
    run = services.features_refresh(trigger=trigger, handoff=True)
    if services.features_refresh_again(run):
        features_refresh_task.apply_async(kwargs={"trigger": "backlog"})
    return {"run": run.pk, "status": run.status, "events": run.events_processed}


@shared_task(
    name="features.neighbours",
    acks_late=True,
    **_RETRY,
    ignore_result=True,
    time_limit=600,
    soft_time_limit=540,
)
def features_neighbours_task(trigger: str = "beat") -> dict:
    """Bring co-occurrence neighbours up to date (beat). A short budget, and none at all while the
    per-user refreshes are behind: on a small worker it must not keep them waiting; a later beat
    continues."""
    if services.features_activity_behind():
        return {"run": None, "status": "deferred", "events": 0}
    run = services.features_neighbours_refresh(trigger=trigger, budget=5.0)
    return {"run": run.pk, "status": run.status, "events": run.events_processed}


@shared_task(
    name="features.sweep",
    acks_late=True,
    **_RETRY,
    ignore_result=True,
    time_limit=300,
    soft_time_limit=240,
)
def features_sweep_task() -> dict:
    """Catalog availability to the hot store, catch-up of missed triggers, job-run pruning."""
    return services.features_sweep()


@shared_task(
    name="features.rebuild",
    acks_late=True,
    ignore_result=True,
    time_limit=3600,
    soft_time_limit=3500,
)
def features_rebuild_task() -> dict:
    """Rebuild what Redis lost from the tables (serving enqueues this when it finds Redis
    empty)."""
    return services.features_rebuild(trigger="auto-rebuild", force=False)
