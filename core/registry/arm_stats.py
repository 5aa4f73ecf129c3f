"""Per-arm serving counters of a running experiment (requests, model errors, model latency,
shadow agreement), kept where every web process can add to them: the cache (Redis).

The serving path adds to in-process totals (no network on the request path) and flushes them at
most every FLUSH_SECONDS, as atomic increments per 5-minute bucket. Guardrails and the admin's
experiment page read the buckets back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable

from django.core.cache import cache

logger = logging.getLogger(__name__)

BUCKET_SECONDS = 300
FLUSH_SECONDS = 2.0
KEEP_SECONDS = 14 * 24 * 3600
FIELDS = ("requests", "errors", "model_calls", "model_us", "shadow_overlap_milli")

_lock = threading.Lock()
_pending: dict[tuple[int, str, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
_last_flush = time.monotonic()


def _key(experiment_id: int, arm: str, bucket: int, field: str) -> str:
    return f"registry:arm:{experiment_id}:{arm}:{bucket}:{field}"


def record(
    *,
    experiment_id: int,
    arm: str,
    error: bool = False,
    model_seconds: float | None = None,
    shadow_overlap: float | None = None,
    now: float | None = None,
) -> None:
    """One served request of `arm` ("stable", "canary", "shadow"): whether the model failed,
    how long an uncached model call took, and (shadow) the share of the shown top items the
    shadow model also ranked."""
    bucket = int((now or time.time()) // BUCKET_SECONDS)
    with _lock:
        totals = _pending[(experiment_id, arm, bucket)]
        totals["requests"] += 1
        totals["errors"] += int(error)
        if model_seconds is not None:
            totals["model_calls"] += 1
            totals["model_us"] += int(model_seconds * 1e6)
        if shadow_overlap is not None:
            totals["shadow_overlap_milli"] += int(shadow_overlap * 1000)
    if time.monotonic() - _last_flush > FLUSH_SECONDS:
        flush()


def flush() -> None:
    global _last_flush
    with _lock:
        pending = dict(_pending)
        _pending.clear()
        _last_flush = time.monotonic()
    for (experiment_id, arm, bucket), totals in pending.items():
        for field, value in totals.items():
            if not value:
                continue
            key = _key(experiment_id, arm, bucket, field)
            try:
                cache.add(key, 0, timeout=KEEP_SECONDS)
                cache.incr(key, value)
            except Exception:  # counters lost beat a failed recommendation
                logger.warning("could not flush experiment counters", exc_info=True)
                return


def read(
    experiment_id: int, arms: Iterable[str], start: float, end: float
) -> dict[str, dict[int, dict[str, int]]]:
    """{arm: {bucket start (epoch seconds): {field: total}}} between `start` and `end`."""
    first, last = int(start // BUCKET_SECONDS), int(end // BUCKET_SECONDS)
    buckets = range(first, last + 1)
    arms = list(arms)
    keys = [
        _key(experiment_id, arm, bucket, field)
        for arm in arms
        for bucket in buckets
        for field in FIELDS
    ]
    try:
        values = cache.get_many(keys) if keys else {}
    except Exception:
        logger.warning("could not read experiment counters", exc_info=True)
        values = {}
    result: dict[str, dict[int, dict[str, int]]] = {}
    for arm in arms:
        per_bucket = {}
        for bucket in buckets:
            totals = {
                field: int(values.get(_key(experiment_id, arm, bucket, field)) or 0)
                for field in FIELDS
            }
            if any(totals.values()):
                per_bucket[bucket * BUCKET_SECONDS] = totals
        result[arm] = per_bucket
    return result
