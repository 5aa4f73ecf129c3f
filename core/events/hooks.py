"""What runs after events are committed. A plain function call, not a Django signal."""

from __future__ import annotations

from collections.abc import Collection


def events_ingested(*, accepted: int, user_ids: Collection[int]) -> None:
    """Called once per committed ingest (HTTP batch or import chunk) that stored at least one new
    event, through `transaction.on_commit`, so the events are durable and visible.

    `accepted`: how many new events; `user_ids`: our ids of the shoppers in the batch (a superset
    of those with new events). The feature pipeline hooks here: it enqueues one refresh unless
    one is already waiting. Keep it cheap: it runs on the request path, and must not raise (the
    events are already stored)."""
    from core.features.services import features_refresh_trigger

    features_refresh_trigger()
