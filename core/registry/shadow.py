"""Shadow scoring: the candidate answers the same live request in the background; its answer is
compared with what the shopper was shown and counted, never shown. Bounded: when SHADOW_WORKERS
calls are already in flight the request is not shadowed (the storefront never waits for it)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from django.conf import settings

from . import arm_stats

if TYPE_CHECKING:
    from core.recommendations.ranking import Candidate
    from core.recommendations.sources import HistoryEntry

    from .selectors import ServingPlan

logger = logging.getLogger(__name__)

SHADOW_WORKERS = 2
OVERLAP_AT = 10
_slots = threading.BoundedSemaphore(SHADOW_WORKERS)
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(SHADOW_WORKERS, thread_name_prefix="shadow")
    return _executor


def _score(history, k: int, shown: list[str], plan: ServingPlan, experiment_id: int) -> None:
    from core.recommendations import model_gateway

    started = time.perf_counter()
    try:
        answer = model_gateway.recommend(
            history,
            k=k,
            budget_seconds=settings.RECOMMENDATIONS_BUDGET_MS / 1000,
            label=plan.shadow_label,
        )
    except model_gateway.ModelUnavailable:
        arm_stats.record(experiment_id=experiment_id, arm="shadow", error=True)
        return
    except Exception:
        logger.exception("shadow scoring failed")
        arm_stats.record(experiment_id=experiment_id, arm="shadow", error=True)
        return
    finally:
        _slots.release()
    top = {c.item_id for c in answer.candidates[:OVERLAP_AT]}
    overlap = len(top & set(shown)) / max(1, len(shown))
    arm_stats.record(
        experiment_id=experiment_id,
        arm="shadow",
        model_seconds=None if answer.cached else time.perf_counter() - started,
        shadow_overlap=overlap,
    )


def shadow_score(
    *,
    history: Sequence[HistoryEntry],
    k: int,
    shown: Sequence[Candidate],
    plan: ServingPlan,
    wait: bool = False,
) -> bool:
    """Submit the shadow call; False when all shadow slots are busy (skipped). `wait` (tests)
    returns after the call."""
    if plan.shadow_label is None or plan.experiment_id is None:
        return False
    if not _slots.acquire(blocking=False):
        return False
    top = [c.item_id for c in shown[:OVERLAP_AT]]
    try:
        future = _pool().submit(_score, list(history), k, top, plan, plan.experiment_id)
    except RuntimeError:  # interpreter shutting down
        _slots.release()
        return False
    if wait:
        future.result()
    return True
