"""Model training from stored events. The registry's version lifecycle builds on this."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.conf import settings

from core.catalog.models import Item
from core.events.models import Event

logger = logging.getLogger(__name__)


class TrainingRefused(ValueError):
    """The stored events cannot train a model (too few, one user, one item...)."""


@dataclass(frozen=True)
class TrainingOutcome:
    version: int
    version_dir: str
    events: int
    train_seconds: float
    table: str


def _training_columns(since: datetime | None) -> dict[str, np.ndarray]:
    """Events as columns, with storefront item ids (the model's vocabulary) and our user ids."""
    weights = settings.EVENT_TYPE_WEIGHTS
    types = [event_type for event_type, weight in weights.items() if weight > 0]
    queryset = Event.objects.filter(type__in=types, item__isnull=False)
    if since is not None:
        queryset = queryset.filter(timestamp__gte=since)
    rows = list(queryset.values_list("user_id", "item_id", "type", "timestamp").iterator(50_000))
    if not rows:
        raise TrainingRefused("no stored events to train on")
    users, items, kinds, stamps = zip(*rows, strict=True)
    external = dict(Item.objects.filter(id__in=set(items)).values_list("id", "external_id"))
    return {
        "user_ids": np.asarray([str(user) for user in users], dtype=object),
        "item_ids": np.asarray([external[item] for item in items], dtype=object),
        "types": np.asarray(kinds, dtype=object),
        "timestamps": np.asarray([stamp.timestamp() for stamp in stamps], dtype=np.float64),
    }


def model_train(
    *, since: datetime | None = None, evaluate: bool = True, tune: bool = True
) -> TrainingOutcome:
    """Train on stored events with the configured event weights, evaluate against the baselines,
    and export the next version into the model repository (atomically)."""
    # TensorFlow loads here, in the worker or command that trains, never in a web process.
    from ml.interactions import InvalidEventsError, interactions_from_columns
    from ml.train import TrainParams, format_table, train_and_export

    columns = _training_columns(since)
    try:
        interactions = interactions_from_columns(**columns, weights=settings.EVENT_TYPE_WEIGHTS)
        result = train_and_export(
            interactions,
            repository=settings.MODEL_REPOSITORY,
            name=settings.MODEL_NAME,
            params=TrainParams(
                evaluate=evaluate, tune=tune, event_weights=dict(settings.EVENT_TYPE_WEIGHTS)
            ),
        )
    except InvalidEventsError as exc:
        raise TrainingRefused(str(exc)) from exc
    assert result.version is not None and result.version_dir is not None
    logger.info("trained model version %s on %d events", result.version, len(interactions))
    return TrainingOutcome(
        version=result.version,
        version_dir=str(result.version_dir),
        events=len(interactions),
        train_seconds=result.train_seconds,
        table=format_table(result.metrics) if result.metrics else "",
    )
