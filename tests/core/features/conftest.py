"""Helpers for the feature pipeline tests: events go in through the ingestion service (what the
API calls), Redis is the real one at REDIS_URL (flushed per test)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings

from core.events.services import events_ingest
from core.events.validation import EventIn
from core.features import hotstore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_events(specs: list[tuple], *, prefix: str = "e") -> list[EventIn]:
    """specs: (user, item, type[, seconds after T0]) -> EventIn with ids f"{prefix}-{n}"."""
    events = []
    for n, spec in enumerate(specs):
        user, item, kind = spec[:3]
        offset = spec[3] if len(spec) > 3 else n
        events.append(
            EventIn(
                index=n,
                event_id=f"{prefix}-{n}",
                user_id=user,
                item_id=item,
                type=kind,
                value=None,
                timestamp=T0 + timedelta(seconds=offset),
                session_id=None,
                recommendation_id=None,
                context=None,
            )
        )
    return events


@pytest.fixture
def ingest() -> Callable[..., int]:
    def _ingest(specs: list[tuple], *, prefix: str = "e") -> int:
        return events_ingest(events=make_events(specs, prefix=prefix)).accepted

    return _ingest


@pytest.fixture
def store() -> redis.Redis:
    """The real Redis behind FEATURES_REDIS_URL, emptied for the test."""
    if not settings.FEATURES_REDIS_URL:
        pytest.skip("needs REDIS_URL")
    hotstore.reset_clients()
    client = redis.Redis.from_url(settings.FEATURES_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    hotstore.reset_clients()
