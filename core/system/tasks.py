import time

from celery import shared_task
from django.core.cache import cache

from .selectors import HEARTBEAT_CACHE_KEY


@shared_task(name="system.heartbeat", ignore_result=True, soft_time_limit=20, time_limit=30)
def heartbeat_task() -> float:
    """Scheduled by beat, run by a worker: records that both are alive."""
    now = time.time()
    cache.set(HEARTBEAT_CACHE_KEY, now, timeout=None)
    return now
