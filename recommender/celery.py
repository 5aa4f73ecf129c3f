"""The Celery app. Periodic work is declared once, here, in `beat_schedule`."""

import os

from celery import Celery, signals
from celery.schedules import crontab

from recommender.settings.features import FEATURES_NEIGHBOURS_SECONDS, FEATURES_SWEEP_SECONDS
from recommender.settings.model_server import MODEL_TRAIN_HOUR
from recommender.settings.registry import REGISTRY_GUARDRAIL_CHECK_SECONDS

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")


def _survive_broker_loss() -> None:
    """kombu 5.7's Redis transport: once the broker connection is lost, the worker's channel
    still puts back or acknowledges `acks_late` messages through a transport whose client is
    already gone, and fails with AttributeError ('NoneType' object has no attribute 'hostname').
    That is not one of the connection errors Celery's reconnect path expects, so the worker
    exits ("Unrecoverable error") instead of waiting for the broker (found by `make chaos`,
    fault "broker"). Raise it as the connection error it is: the worker reconnects; messages it
    could not ack or put back stay in the broker's unacked set and are delivered again after the
    visibility timeout (the tasks are idempotent, and beat's sweep does their work sooner)."""
    import redis
    from kombu.transport import redis as kombu_redis

    connparams = kombu_redis.Channel._connparams
    if getattr(connparams, "raises_connection_error", False):
        return

    def _connparams(self, asynchronous=False):  # type: ignore[no-untyped-def]
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return connparams(self, asynchronous=asynchronous)

    _connparams.raises_connection_error = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


_survive_broker_loss()

app = Celery("recommender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_failure.connect
def _count_task_failure(sender=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    from core.system.metrics import observe_task_failure

    observe_task_failure(getattr(sender, "name", None) or "unknown")


app.conf.beat_schedule = {
    # Proves that beat and a worker are alive; /readyz and the admin read the last beat.
    "system-heartbeat": {"task": "system.heartbeat", "schedule": 30.0},
    # Feature pipeline safety net: fold events a lost on-commit trigger missed (e.g. while the
    # broker was down) and copy catalog availability to the hot store. Stale copies are dropped.
    "features-sweep": {
        "task": "features.sweep",
        "schedule": FEATURES_SWEEP_SECONDS,
        "options": {"expires": FEATURES_SWEEP_SECONDS * 5},
    },
    # Item co-occurrence ("viewed together", "bought together") brought up to date.
    "features-neighbours": {
        "task": "features.neighbours",
        "schedule": FEATURES_NEIGHBOURS_SECONDS,
        "options": {"expires": FEATURES_NEIGHBOURS_SECONDS * 3},
    },
    # A canary that keeps breaking a guardrail (error rate, latency, CTR drop) is rolled back.
    "registry-guard-experiments": {
        "task": "registry.guard_experiments",
        "schedule": REGISTRY_GUARDRAIL_CHECK_SECONDS,
        "options": {"expires": REGISTRY_GUARDRAIL_CHECK_SECONDS * 2},
    },
    # Hourly: a push whose validation was interrupted fails with that reason; orphaned uploads go.
    "registry-sweep": {
        "task": "registry.sweep",
        "schedule": crontab(minute=17),
        "options": {"expires": 1800},
    },
    # Drop event partitions past EVENTS_RETENTION_DAYS and idempotency keys past EVENTS_DEDUP_DAYS.
    "events-retention": {"task": "events.retention", "schedule": 3600.0},
}
if MODEL_TRAIN_HOUR >= 0:
    # Daily: train on stored events and export the next model version.
    app.conf.beat_schedule["registry-train-model"] = {
        "task": "registry.train_model",
        "schedule": crontab(hour=MODEL_TRAIN_HOUR, minute=0),
        "options": {"expires": 6 * 3600},
    }
