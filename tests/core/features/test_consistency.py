"""Ids that become visible out of order, catalog availability, the right to be forgotten."""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest
from django.db import connection

from core.catalog.services import item_delete, items_upsert, user_forget
from core.catalog.validation import ItemIn
from core.features import selectors
from core.features.models import JobRun, UserFeatures, Watermark
from core.features.services import features_catalog_sync, features_refresh

from .conftest import T0


def _other_connection() -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params)


def _insert_uncommitted(conn: psycopg.Connection, user_pk: int, item_pk: int, key: str) -> int:
    row = conn.execute(
        "INSERT INTO events_event (event_id, user_id, item_id, type, timestamp, ingested_at) "
        "VALUES (%s, %s, %s, 'view', %s, %s) RETURNING id",
        [key, user_pk, item_pk, T0, datetime.now(tz=T0.tzinfo)],
    ).fetchone()
    return row[0]


def _watermark() -> int:
    return Watermark.objects.get(pk="activity").last_event_id


def _refresh_beside_a_running_one() -> tuple[JobRun, float]:
    """A triggered refresh while another worker's run holds the activity lock: the run it
    returns, and how long it took."""
    from core.features.pipeline import _advisory_key

    with _other_connection() as other:
        other.execute("SELECT pg_advisory_lock(%s)", [_advisory_key("activity")])
        started = time.monotonic()
        run = features_refresh(trigger="on_commit", handoff=True)
        return run, time.monotonic() - started


@pytest.mark.django_db(transaction=True)
def test_an_id_committed_late_is_waited_for_not_skipped(ingest, store):
    # given: events 1..n counted; another transaction holds the next id, uncommitted
    from core.catalog.models import Item, User

    ingest([("u1", "a", "view")])
    features_refresh(trigger="test")
    user_pk = User.objects.get(external_id="u1").pk
    item_pk = Item.objects.get(external_id="a").pk
    late = _other_connection()
    try:
        held = _insert_uncommitted(late, user_pk, item_pk, "late-1")
        ingest([("u1", "a", "view")], prefix="after")  # a higher id, committed first

        # when
        features_refresh(trigger="test")

        # then: the watermark stops below the hole; nothing past it is counted yet
        assert _watermark() == held - 1
        assert UserFeatures.objects.get(user_id=user_pk).counts == {"view": 1}

        # when the late transaction commits
        late.commit()
        features_refresh(trigger="test")

        # then: both are counted, once
        assert UserFeatures.objects.get(user_id=user_pk).counts == {"view": 3}
        assert _watermark() > held
    finally:
        late.close()


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_id_is_skipped_after_the_gap_timeout(ingest, store, settings):
    # given: an id taken and rolled back, while an unrelated transaction stays open (so the
    # "nothing in progress" shortcut cannot apply)
    from core.catalog.models import Item, User

    settings.FEATURES_GAP_TIMEOUT_SECONDS = 0.3
    ingest([("u1", "a", "view")])
    features_refresh(trigger="test")
    user_pk = User.objects.get(external_id="u1").pk
    item_pk = Item.objects.get(external_id="a").pk
    busy = _other_connection()
    rolled = _other_connection()
    try:
        busy.execute("SELECT pg_current_xact_id()")
        _insert_uncommitted(rolled, user_pk, item_pk, "rolled-1")
        rolled.rollback()
        ingest([("u1", "a", "click")], prefix="after")

        # when
        features_refresh(trigger="test")
        stuck = UserFeatures.objects.get(user_id=user_pk).counts
        deadline = time.monotonic() + 10
        while UserFeatures.objects.get(user_id=user_pk).counts.get("click") is None:
            assert time.monotonic() < deadline, "the hole was never skipped"
            time.sleep(0.05)
            features_refresh(trigger="test")

        # then
        assert stuck == {"view": 1}
        assert UserFeatures.objects.get(user_id=user_pk).counts == {"view": 1, "click": 1}
        assert Watermark.objects.get(pk="activity").gap_event_id is None
    finally:
        busy.close()
        rolled.close()


@pytest.mark.django_db(transaction=True)
def test_deleted_and_unavailable_items_reach_the_serving_filter_at_once(ingest, store):
    # given
    ingest([("u1", "a", "view"), ("u1", "b", "view"), ("u1", "c", "view")])
    features_refresh(trigger="test")
    features_catalog_sync()

    # when: a delete and an update to unavailable commit (their hooks run after commit)
    item_delete(external_id="a")
    items_upsert(items=[ItemIn(external_id="b", available=False)])

    # then
    assert selectors.item_unavailable_among(["a", "b", "c"]) == {"a", "b"}
    assert [s.item_id for s in selectors.item_popular()] == ["c"]

    # when b is available again, the next sweep brings it back
    items_upsert(items=[ItemIn(external_id="b", available=True)])
    features_catalog_sync()

    # then
    assert selectors.item_unavailable_ids() == frozenset({"a"})


@pytest.mark.django_db(transaction=True)
def test_forgetting_a_shopper_erases_their_features(ingest, store):
    # given
    ingest([("u1", "a", "view"), ("u2", "a", "view")])
    features_refresh(trigger="test")
    assert selectors.user_history(user_id="u1")

    # when
    report = user_forget(external_id="u1")

    # then
    assert report.removed["features"] >= 1
    assert selectors.user_history(user_id="u1") == []
    assert not store.exists("feat:u:u1")
    assert [e.item_id for e in selectors.user_history(user_id="u2")] == ["a"]


@pytest.mark.django_db(transaction=True)
def test_a_triggered_refresh_that_finds_one_running_hands_over_instead_of_waiting(ingest, store):
    # given: another worker's run holds the activity lock
    from django.core.cache import cache

    from core.features.services import REFRESH_PENDING_KEY, features_refresh_again

    ingest([("u1", "a", "view")])

    # when
    skipped, waited = _refresh_beside_a_running_one()

    # then: it did not keep a worker process waiting, and commits meanwhile need not enqueue
    # more refreshes (the holder queues one)
    assert skipped.status == "skipped" and waited < 5
    assert not features_refresh_again(skipped)
    assert cache.get(REFRESH_PENDING_KEY) is not None
    cache.delete(REFRESH_PENDING_KEY)

    # and the holder, once it lets go, queues one more refresh (once)
    holder = features_refresh(trigger="test")
    assert holder.status == "succeeded"
    assert features_refresh_again(holder)
    assert not features_refresh_again(holder)


class _CacheDown:
    """The cache Redis stopped: every call fails as redis-py's would."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to the cache. Connection refused.")

        return fail


@pytest.mark.django_db(transaction=True)
def test_with_the_cache_down_a_refresh_that_finds_one_running_still_does_not_wait(
    ingest, store, monkeypatch
):
    # given: another worker's run holds the activity lock, and no note can be left for it
    from core.features import services

    ingest([("u1", "a", "view")])
    monkeypatch.setattr(services, "cache", _CacheDown())

    # when
    skipped, waited = _refresh_beside_a_running_one()

    # then: skipped all the same (beat's sweep does its work), the worker process freed at once
    assert skipped.status == "skipped" and waited < 5


@pytest.mark.django_db(transaction=True)
def test_with_the_cache_down_the_refresh_task_still_folds(ingest, store, monkeypatch):
    from core.features import services, tasks

    ingest([("u1", "a", "view")])
    monkeypatch.setattr(services, "cache", _CacheDown())
    monkeypatch.setattr(tasks, "cache", _CacheDown())

    result = tasks.features_refresh_task(trigger="on_commit")

    assert result["status"] == "succeeded" and result["events"] == 1
    assert UserFeatures.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_items_runs_keep_one_thread_and_one_database_connection(ingest, store):
    # given: the items' runs go on a thread beside the shoppers'
    from core.features import services

    def backend_pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    ingest([("u1", "a", "view")])
    features_refresh(trigger="on_commit", handoff=True)
    first = services._items_thread().submit(backend_pid).result()

    # when: the next refresh
    ingest([("u2", "b", "view")], prefix="second")
    features_refresh(trigger="on_commit", handoff=True)

    # then: its items run used the same connection (no new PostgreSQL backend a refresh)
    assert services._items_thread().submit(backend_pid).result() == first
    assert {s.item_id for s in selectors.item_popular()} == {"a", "b"}
