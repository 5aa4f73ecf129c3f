from celery import shared_task

from .services import events_retention_apply


@shared_task(name="events.retention", acks_late=True, time_limit=600, soft_time_limit=540)
def events_retention_task() -> dict:
    """Drop expired event partitions and idempotency keys. Idempotent: safe to redeliver."""
    return events_retention_apply()
