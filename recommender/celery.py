"""The Celery app. Periodic work is declared once, here, in `beat_schedule`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")

app = Celery("recommender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Proves that beat and a worker are alive; /readyz and the admin read the last beat.
    "system-heartbeat": {"task": "system.heartbeat", "schedule": 30.0},
}
