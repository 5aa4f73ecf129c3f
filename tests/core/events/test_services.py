"""events_ingest on a real PostgreSQL: racing retries, partitions, retention, the watermark read."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections, transaction

from core.events import partitions
from core.events.models import Event, EventKey
from core.events.selectors import events_after
from core.events.services import (
    events_ingest,
    events_prepare,
    events_retention_apply,
    events_store_prepared,
)
from core.events.validation import EventValidator

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="partitioning and row locks are PostgreSQL's"
)


def valid(raw: list[dict]) -> list:
    events, errors = EventValidator().validate(raw)
    assert errors == []
    return events


def batch(n: int, prefix: str = "e", **fields) -> list:
    return valid(
        [
            {"event_id": f"{prefix}-{i}", "user_id": f"u-{i % 7}", "item_id": f"i-{i % 11}"}
            | {"type": "view"}
            | fields
            for i in range(n)
        ]
    )


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.01)


def a_session_waits_on_a_lock() -> bool:
    """Another session of this database is blocked on a lock (the second of two ingests)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def race_two(store) -> dict:
    """`store` run twice at once: the first inside a transaction kept open until the second is
    blocked on its locks, then committed; {"first": result, "second": result}."""
    first_claimed, release_first = threading.Event(), threading.Event()
    results = {}

    def first():
        try:
            with transaction.atomic():
                results["first"] = store()
                first_claimed.set()
                release_first.wait(10)
        finally:
            connections.close_all()

    def second():
        try:
            first_claimed.wait(10)
            results["second"] = store()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_claimed.wait(10)
    wait_until(a_session_waits_on_a_lock)
    release_first.set()
    for thread in threads:
        thread.join(20)
    return results


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("catalog", ["known", "created by the first request"])
def test_two_racing_retries_store_each_event_once(catalog):
    # given: the first request has claimed the keys and not yet committed
    events = batch(200)
    if catalog == "known":  # the one-statement path; else the general path creates them
        events_ingest(events=batch(11, prefix="warm-up"))
        Event.objects.all().delete()
        EventKey.objects.all().delete()

    # when: the second blocks on the first's uncommitted keys, then the first commits
    results = race_two(lambda: events_ingest(events=events))

    # then
    assert results["first"].accepted == 200
    assert results["second"].accepted == 0
    assert results["second"].duplicates == 200
    assert Event.objects.count() == 200
    assert EventKey.objects.count() == 200


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_retry_after_a_rolled_back_attempt_stores_the_events():
    events = batch(20)
    with pytest.raises(RuntimeError), transaction.atomic():
        events_ingest(events=events)
        raise RuntimeError("the first attempt dies before commit")

    result = events_ingest(events=events)

    assert result.accepted == 20
    assert Event.objects.count() == 20


@pytest.mark.django_db
def test_copy_path_stores_the_same_as_the_array_path():
    by_arrays = events_ingest(events=batch(30, prefix="a", value=2.5, context={"k": 1}))
    by_copy = events_ingest(
        events=batch(30, prefix="c", value=2.5, context={"k": 1}), use_copy=True
    )
    again = events_ingest(events=batch(30, prefix="c"), use_copy=True)

    assert (by_arrays.accepted, by_copy.accepted, again.duplicates) == (30, 30, 30)
    assert Event.objects.filter(event_id="c-3", value=2.5, context={"k": 1}).exists()


@postgresql_only
@pytest.mark.django_db
def test_events_land_in_monthly_partitions():
    # given
    events = batch(3, timestamp="2021-02-10T00:00:00Z") + batch(
        2, prefix="x", timestamp="2021-03-31T23:59:59Z"
    )

    # when
    events_ingest(events=events)

    # then
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text, count(*) FROM events_event GROUP BY 1 ORDER BY 1"
        )
        placed = cursor.fetchall()
    assert placed == [("events_event_p202102", 3), ("events_event_p202103", 2)]


@postgresql_only
@pytest.mark.django_db
def test_creating_a_partition_moves_rows_out_of_the_default_one():
    # given: rows of a month without a partition (as if an insert raced its creation)
    events_ingest(events=batch(4, timestamp="2019-05-05T00:00:00Z"))
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE saved AS SELECT * FROM events_event_p201905;"
            "ALTER TABLE events_event DETACH PARTITION events_event_p201905;"
            "DROP TABLE events_event_p201905;"
            "INSERT INTO events_event SELECT * FROM saved;"
        )
    partitions._known_months.clear()

    # when
    created = partitions.partitions_ensure(timestamps=[datetime(2019, 5, 9, tzinfo=UTC)])

    # then
    assert created == ["events_event_p201905"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM events_event_default")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM events_event_p201905")
        assert cursor.fetchone()[0] == 4


@pytest.mark.django_db
def test_retention_drops_old_months_and_keeps_recent_ones(settings):
    settings.EVENTS_RETENTION_DAYS = 30
    now = datetime(2026, 6, 15, tzinfo=UTC)
    events_ingest(events=batch(3, prefix="old", timestamp="2026-04-20T00:00:00Z"))
    events_ingest(events=batch(2, prefix="new", timestamp="2026-05-20T00:00:00Z"))

    report = events_retention_apply(now=now)

    assert set(Event.objects.values_list("event_id", flat=True)) == {"new-0", "new-1"}
    if connection.vendor == "postgresql":
        assert report["dropped_partitions"] == ["events_event_p202604"]
        assert [name for name, _ in partitions.partitions_list()][-1] == "events_event_p202605"


@pytest.mark.django_db
def test_retention_prunes_old_idempotency_keys(settings):
    settings.EVENTS_DEDUP_DAYS = 7
    events_ingest(events=batch(5))

    report = events_retention_apply(now=datetime.now(tz=UTC) + timedelta(days=8))

    assert report["pruned_keys"] == 5
    assert not EventKey.objects.exists()


@pytest.mark.django_db
def test_events_after_reads_past_a_watermark_in_id_order():
    events_ingest(events=batch(10))
    ids = list(Event.objects.order_by("id").values_list("id", flat=True))
    later = datetime.now(tz=UTC) + timedelta(minutes=1)

    page = list(events_after(after_id=ids[3], limit=4, now=later))
    settled_only = list(events_after(after_id=0, now=datetime.now(tz=UTC) - timedelta(hours=1)))

    assert [event.id for event in page] == ids[4:8]
    assert settled_only == []


@postgresql_only
@pytest.mark.django_db
def test_watermark_read_uses_the_primary_key_index():
    events_ingest(events=batch(10, timestamp="2020-01-01T00:00:00Z"))
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT * FROM events_event WHERE id > 5 ORDER BY id LIMIT 100")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "events_event_p202001_pkey" in plan


@postgresql_only
@pytest.mark.django_db
@pytest.mark.parametrize("use_copy", [False, True], ids=["arrays", "copy"])
def test_a_retry_after_forgetting_the_shopper_creates_nothing(use_copy):
    # given: events that created their shopper and item, then the shopper was forgotten
    from core.catalog.models import Item, User
    from core.catalog.services import user_forget

    events = valid(
        [
            {"event_id": f"f-{n}", "user_id": "forgotten", "item_id": f"new-{n}", "type": "view"}
            for n in range(5)
        ]
    )
    assert events_ingest(events=events, use_copy=use_copy).accepted == 5
    user_forget(external_id="forgotten")
    Item.objects.filter(external_id__startswith="new-").delete()

    # when: the same events are sent again
    result = events_ingest(events=events, use_copy=use_copy)

    # then: duplicates; neither the shopper nor the items come back
    assert (result.accepted, result.duplicates) == (0, 5)
    assert not User.objects.filter(external_id="forgotten").exists()
    assert not Item.objects.filter(external_id__startswith="new-").exists()
    assert Event.objects.count() == 0


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("overlap", ["racing retry", "half of the chunk stored before"])
def test_import_store_claims_each_key_once(overlap):
    # given: the import's store (a plain claim, falling back to key by key when a key is taken)
    events = batch(200, value=2.5, context={"page": "home"}, recommendation_id="r-1")
    if overlap == "half of the chunk stored before":
        cache: dict = {}
        events_store_prepared(prepared=events_prepare(events=events[::2], id_cache=cache))
        result = events_store_prepared(prepared=events_prepare(events=events, id_cache=cache))
        assert (result.accepted, result.duplicates) == (100, 100)
    else:
        results = race_two(
            lambda: events_store_prepared(prepared=events_prepare(events=events, id_cache={}))
        )
        assert (results["first"].accepted, results["second"].accepted) == (200, 0)
        assert results["second"].duplicates == 200

    # then: every event once, as sent (the context is the same JSON through either COPY)
    assert Event.objects.count() == 200
    assert EventKey.objects.count() == 200
    stored = Event.objects.get(event_id="e-3")
    assert (stored.value, stored.recommendation_id) == (2.5, "r-1")
    assert stored.context == {"page": "home"}
    assert stored.user.external_id == "u-3"
    assert {e.context["page"] for e in Event.objects.all()} == {"home"}
