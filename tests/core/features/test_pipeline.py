"""The batch job: exactly-once counts, history, trends, neighbours, Redis as derived state."""

from __future__ import annotations

import math
import time

import orjson
import pytest
import redis

from core.catalog.models import User
from core.features import hotstore, selectors
from core.features.models import ItemFeatures, JobRun, UserFeatures, Watermark
from core.features.services import features_neighbours_refresh, features_refresh

from .conftest import T0

pytestmark = pytest.mark.django_db


def test_batch_counts_each_event_once_and_publishes_to_redis(ingest, store, settings):
    # given
    settings.EVENT_TYPE_WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 8.0}
    ingest(
        [("u1", "a", "view"), ("u1", "a", "click"), ("u1", "b", "purchase"), ("u2", "a", "view")]
    )

    # when
    run = features_refresh(trigger="test")

    # then
    assert run.status == "succeeded" and run.events_processed == 4
    features = selectors.user_features(user_id="u1")
    assert features.counts == {"view": 1, "click": 1, "purchase": 1}
    assert features.weight_sum == 11.0
    assert [(e.item_id, e.type, e.weight) for e in features.history] == [
        ("a", "view", 1.0),
        ("a", "click", 2.0),
        ("b", "purchase", 8.0),
    ]
    item = selectors.item_features(item_id="a")
    assert item.counts == {"view": 2, "click": 1}
    assert item.popularity == 4.0
    assert item.conversion_rate == 0.0
    assert [s.item_id for s in selectors.item_popular(window="all")] == ["b", "a"]
    assert store.exists(hotstore.user_key("u1"))


def test_running_again_changes_nothing(ingest, store):
    # given
    ingest([("u1", "a", "view"), ("u1", "b", "view")])
    features_refresh(trigger="test")
    before = (
        list(UserFeatures.objects.values()),
        list(ItemFeatures.objects.values()),
        store.get(hotstore.user_key("u1")),
    )

    # when: a redelivered task
    run = features_refresh(trigger="redelivered")

    # then
    assert run.events_processed == 0
    after = (
        list(UserFeatures.objects.values()),
        list(ItemFeatures.objects.values()),
        store.get(hotstore.user_key("u1")),
    )
    assert after == before


def test_batches_add_up_to_one_big_batch(ingest, store, settings):
    # given: 60 events folded 7 at a time
    specs = [
        (f"u{n % 4}", f"i{n % 6}", ("view", "click", "purchase")[n % 3], n * 600) for n in range(60)
    ]
    ingest(specs)
    settings.FEATURES_BATCH_SIZE = 7

    # when
    small = features_refresh(trigger="test", budget=1000)
    small_rows = {r["item_id"]: r for r in ItemFeatures.objects.values()}
    settings.FEATURES_BATCH_SIZE = 1000
    from core.features.services import features_rebuild

    features_rebuild(recompute=True)

    # then
    assert small.batches >= 9 and small.events_processed == 60
    big_rows = {r["item_id"]: r for r in ItemFeatures.objects.values()}
    assert small_rows.keys() == big_rows.keys()
    for pk, row in big_rows.items():
        assert row["counts"] == small_rows[pk]["counts"]
        for column in ("popularity", "trend_1h", "trend_24h", "trend_7d", "trend_ref"):
            assert row[column] == pytest.approx(small_rows[pk][column], rel=1e-9)


def test_trend_is_the_decayed_weighted_count(ingest, store, settings):
    # given: a view at T0 and a purchase 1 hour later
    settings.EVENT_TYPE_WEIGHTS = {"view": 1.0, "purchase": 8.0}
    ingest([("u1", "a", "view", 0), ("u2", "a", "purchase", 3600)])

    # when
    features_refresh(trigger="test")

    # then: valued at the latest event, the 1 h half-life halves the view
    row = ItemFeatures.objects.get()
    assert row.trend_ref == pytest.approx(T0.timestamp() + 3600)
    assert row.trend_1h == pytest.approx(8.0 + 0.5)
    assert row.trend_24h == pytest.approx(8.0 + 2 ** (-1 / 24))
    assert row.popularity == 9.0


def test_trending_order_follows_recent_activity(ingest, store):
    # given: "old" had many views a week ago, "new" a few just now
    ingest(
        [(f"u{n}", "old", "view", 0) for n in range(10)]
        + [(f"u{n}", "new", "view", 7 * 86400) for n in range(3)]
    )

    # when
    features_refresh(trigger="test")

    # then
    assert [s.item_id for s in selectors.item_popular(window="all")] == ["old", "new"]
    assert [s.item_id for s in selectors.item_popular(window="1h")] == ["new", "old"]
    assert [s.item_id for s in selectors.item_popular(window="7d")] == ["old", "new"]
    assert [s.item_id for s in selectors.item_popular(window="24h")] == ["new", "old"]


def test_history_keeps_the_last_n_most_recent_last(ingest, store, settings):
    # given
    settings.FEATURES_HISTORY_LENGTH = 3
    ingest([("u1", f"i{n}", "view", 100 - n) for n in range(5)])  # arrive newest first

    # when
    features_refresh(trigger="test")

    # then
    assert [e.item_id for e in selectors.user_history(user_id="u1")] == ["i2", "i1", "i0"]
    assert [e.item_id for e in selectors.user_history(user_id="u1", limit=2)] == ["i1", "i0"]


def test_popular_per_category_covers_the_subtree(ingest, store):
    # given
    from core.catalog.models import Item

    ingest([("u1", "shoe", "view"), ("u2", "shoe", "view"), ("u1", "shirt", "view")])
    Item.objects.filter(external_id="shoe").update(category="wear/shoes")
    Item.objects.filter(external_id="shirt").update(category="wear/tops")

    # when
    features_refresh(trigger="test")

    # then
    assert [s.item_id for s in selectors.item_popular(category="wear")] == ["shoe", "shirt"]
    assert [s.item_id for s in selectors.item_popular(category="wear/tops")] == ["shirt"]


def test_neighbours_count_items_seen_together(ingest, store):
    # given: two shoppers view a then b; one also views c; one buys a and b
    ingest(
        [
            ("u1", "a", "view"),
            ("u1", "b", "view"),
            ("u2", "a", "view"),
            ("u2", "b", "view"),
            ("u2", "c", "view"),
            ("u2", "a", "purchase"),
            ("u2", "b", "purchase"),
        ]
    )

    # when
    run = features_neighbours_refresh(trigger="test")

    # then
    assert run.events_processed == 7
    view = selectors.item_neighbours(item_id="a", kind="view")
    assert [(s.item_id, s.score) for s in view] == [("b", 2.0), ("c", 1.0)]
    buy = selectors.item_neighbours(item_id="b", kind="buy")
    assert [(s.item_id, s.score) for s in buy] == [("a", 1.0)]


def test_neighbours_of_a_redelivered_batch_are_not_doubled(ingest, store):
    # given
    ingest([("u1", "a", "view"), ("u1", "b", "view")])
    features_neighbours_refresh(trigger="test")

    # when
    features_neighbours_refresh(trigger="again")
    ingest([("u1", "c", "view")], prefix="later")
    features_neighbours_refresh(trigger="test")

    # then
    assert [(s.item_id, s.score) for s in selectors.item_neighbours(item_id="a")] == [
        ("b", 1.0),
        ("c", 1.0),
    ]


def test_redis_emptied_is_served_from_the_database_then_rebuilt(ingest, store):
    # given
    ingest([("u1", "a", "view"), ("u1", "b", "view"), ("u1", "b", "purchase")])
    features_refresh(trigger="test")
    features_neighbours_refresh(trigger="test")
    expected = selectors.user_features(user_id="u1")

    # when: Redis loses everything
    store.flushdb()

    # then: serving still answers from PostgreSQL
    assert selectors.user_features(user_id="u1") == expected
    assert [s.item_id for s in selectors.item_popular()] == ["b", "a"]
    assert [s.item_id for s in selectors.item_neighbours(item_id="a")] == ["b"]

    # and the next job run rebuilds Redis without an operator
    features_refresh(trigger="sweep")
    features_neighbours_refresh(trigger="sweep")
    assert store.get(hotstore.marker_key("activity")) is not None
    assert store.zrevrange(hotstore.zset_key("all"), 0, -1) == [b"b", b"a"]
    assert orjson.loads(store.get(hotstore.neighbours_key("view", "a"))) == [["b", 1.0]]


def test_redis_behind_the_tables_is_republished(ingest, store):
    # given: a batch committed but its Redis writes never happened (worker died in between)
    ingest([("u1", "a", "view")])
    features_refresh(trigger="test")
    ingest([("u1", "b", "view")], prefix="second")
    first = Watermark.objects.get(pk="activity").last_event_id
    assert Watermark.objects.get(pk="items").last_event_id == first
    features_refresh(trigger="test")
    store.set(hotstore.marker_key("activity"), first)
    store.set(hotstore.marker_key("items"), first)
    store.delete(hotstore.item_key("b"))
    store.zrem(hotstore.zset_key("all"), "b")

    # when
    features_refresh(trigger="sweep")

    # then
    assert store.exists(hotstore.item_key("b"))
    assert [e.item_id for e in selectors.user_history(user_id="u1")] == ["a", "b"]
    assert {s.item_id for s in selectors.item_popular()} == {"a", "b"}


def test_keys_in_an_earlier_layout_are_rebuilt_by_the_next_run(ingest, store):
    # given: Redis as the code before layout 2 left it (history in feat:h:, scores in seconds,
    # no layout key) while the tables are up to date
    ingest([("u1", "a", "view"), ("u1", "b", "click")])
    features_refresh(trigger="test")
    store.delete(hotstore.layout_key("activity"), hotstore.history_key("u1"))
    store.zadd("feat:h:u1", {"00000000000000000001|view|a": T0.timestamp()})

    # when
    run = features_refresh(trigger="sweep")

    # then: rebuilt, though the marker agreed with the watermark and nothing was new
    assert run.events_processed == 0
    assert not store.exists("feat:h:u1")
    assert store.get(hotstore.layout_key("activity")) == str(hotstore.LAYOUTS["activity"]).encode()
    history = selectors.user_history(user_id="u1")
    assert [(e.item_id, e.timestamp) for e in history] == [
        ("a", T0.timestamp()),
        ("b", T0.timestamp() + 1),
    ]


def test_a_refused_shopper_write_raises_and_the_connection_is_not_reused(store):
    # given: a key of the wrong type where a history goes (ZADD answers WRONGTYPE)
    store.set(hotstore.history_key("bad"), "not a sorted set")
    users = [
        ["ok", '{"v": 1}', [1, "view", "a", 1.5]],
        ["bad", '{"v": 2}', [2, "view", "a", 2.5]],
        ["after", '{"v": 3}', [3, "view", "b", 3.5]],
    ]

    # when / then: the error is raised once every reply is read
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        hotstore.users_write(store, users, 50)
    assert store.get(hotstore.user_key("after")) == b'{"v": 3}'
    assert store.zrange(hotstore.history_key("ok"), 0, -1, withscores=True) == [
        (b"00000000000000000001|view|a", 1_500_000.0)
    ]
    # and the pool's connections still answer their own commands
    assert store.ping() and store.get(hotstore.user_key("ok")) == b'{"v": 1}'


def test_every_run_is_recorded(ingest, store):
    # given
    ingest([("u1", "a", "view")])

    # when
    features_refresh(trigger="test")
    features_refresh(trigger="test")

    # then
    runs = list(JobRun.objects.filter(consumer="activity").order_by("id"))
    assert [(r.status, r.events_processed) for r in runs] == [("succeeded", 1), ("succeeded", 0)]
    assert runs[0].finished_at >= runs[0].started_at
    assert runs[0].max_event_age_seconds is not None and runs[0].backlog_events == 0


def test_unknown_user_has_no_history(store):
    assert selectors.user_history(user_id="nobody") == []
    assert selectors.user_features(user_id="nobody") is None
    assert selectors.item_features(item_id="nothing") is None
    assert math.isfinite(hotstore.log_trend(0.0, 0.0, "1h"))


def test_redis_unreachable_selectors_read_the_database(ingest, store, settings):
    # given: features computed, then Redis unreachable (nothing listens on port 1)
    ingest([("u1", "a", "view"), ("u1", "b", "purchase")])
    features_refresh(trigger="test")
    settings.FEATURES_REDIS_URL = "redis://127.0.0.1:1/0"
    hotstore.reset_clients()

    # when
    history = selectors.user_history(user_id="u1")
    popular = selectors.item_popular(window="24h")

    # then
    assert [e.item_id for e in history] == ["a", "b"]
    assert [s.item_id for s in popular] == ["b", "a"]
    assert selectors.item_unavailable_among(["a", "b"]) == set()


def _hot_contents(store) -> dict:
    """Every activity key in Redis: blobs parsed, sorted sets with their exact scores."""
    contents = {}
    for key in store.scan_iter(match="feat:[usiz]:*"):
        if store.type(key) == b"zset":
            contents[key] = store.zrange(key, 0, -1, withscores=True)
        else:
            contents[key] = orjson.loads(store.get(key))
    return contents


def test_batches_in_several_publishes_write_exactly_what_a_rebuild_writes(ingest, store, settings):
    # given: times with microseconds, a shopper past the history length, odd ids, and batches
    # small enough that several are published while the next one folds
    settings.FEATURES_HISTORY_LENGTH = 5
    settings.FEATURES_BATCH_SIZE = 4
    ingest(
        [("u|1", f"i|{n % 3}", ("view", "click")[n % 2], n * 1.000001 + 0.123456) for n in range(9)]
        + [("u2", "ü", "purchase", 100.5)]
    )

    # when
    run = features_refresh(trigger="test", budget=1000)
    published = _hot_contents(store)
    from core.features.services import features_rebuild

    features_rebuild()

    # then
    assert run.batches == 3
    assert _hot_contents(store) == published
    history = store.zrange(hotstore.history_key("u|1"), 0, -1, withscores=True)
    last = UserFeatures.objects.get(user_id=User.objects.get(external_id="u|1").pk).last_event_id
    assert len(history) == 5
    assert history[-1] == (  # the score: the event's time in whole microseconds, exactly
        f"{last:020d}|view|i|2".encode(),
        float(int(T0.timestamp()) * 1_000_000 + T0.microsecond + 8_123_464),
    )
    read = selectors.user_history(user_id="u|1")[-1].timestamp
    assert read == pytest.approx(T0.timestamp() + 8.123464, abs=1e-7)
    assert orjson.loads(store.get(hotstore.user_key("u|1")))["c"] == {"view": 5, "click": 4}


# The triggered run folds the items on a thread of its own, with its own database session: it
# sees only committed events.
@pytest.mark.django_db(transaction=True)
def test_a_triggered_run_folds_what_arrives_while_it_runs_a_command_stops(
    ingest, store, monkeypatch
):
    # given: a fold during which more events arrive (once)
    from core.features.activity import ActivityConsumer

    apply = ActivityConsumer.apply
    arrivals = iter([[("u2", "b", "view")], [("u3", "c", "view")]])

    def apply_while_ingesting(self, rows, after, upto):
        outcome = apply(self, rows, after, upto)
        more = next(arrivals, None)
        if more and len(rows) == 1:
            ingest(more, prefix=f"late-{more[0][0]}")
        return outcome

    monkeypatch.setattr(ActivityConsumer, "apply", apply_while_ingesting)
    ingest([("u1", "a", "view")])

    # when: a command's run, then a triggered one
    command = features_refresh(trigger="command")
    triggered = features_refresh(trigger="on_commit", handoff=True)

    # then: the command stopped at what was there when its batch began; the triggered run
    # went on with what arrived meanwhile
    assert (command.batches, command.events_processed) == (1, 1)
    assert (triggered.batches, triggered.events_processed) == (2, 2)
    assert selectors.user_features(user_id="u3") is not None
    # and the items' run beside it may have finished before "c" came: the refresh its commit
    # triggers folds it
    features_refresh(trigger="on_commit", handoff=True)
    assert {s.item_id for s in selectors.item_popular()} == {"a", "b", "c"}


def test_neighbours_wait_while_the_fresh_path_is_behind(ingest, store, settings):
    # given: more than a tenth of a batch of events the per-user refresh has not folded yet
    from core.features.models import ItemNeighbours
    from core.features.tasks import features_neighbours_task

    settings.FEATURES_BATCH_SIZE = 4
    ingest([(f"u{n % 2}", f"i{n % 3}", "view") for n in range(10)])

    # when
    deferred = features_neighbours_task()

    # then
    assert deferred["status"] == "deferred"
    assert not ItemNeighbours.objects.exists()

    # when: the fresh path caught up
    features_refresh(trigger="test", budget=1000)
    ran = features_neighbours_task()

    # then
    assert ran["status"] == "succeeded" and ran["events"] == 10
    assert ItemNeighbours.objects.exists()


def test_a_paced_run_pauses_only_once_caught_up(ingest, store):
    # given: three events, folded one per batch
    from core.features.pipeline import consumer_run
    from core.features.services import CONSUMERS

    ingest([("u1", "a", "view"), ("u2", "b", "view"), ("u3", "c", "view")])

    # when
    started = time.monotonic()
    run = consumer_run(
        CONSUMERS["items"], trigger="test", batch_size=1, follow=True, pace=0.5, budget=100
    )
    elapsed = time.monotonic() - started

    # then: the backlog went without a pause, the batch that caught up was followed by one
    # (before the last, empty, batch)
    assert (run.batches, run.events_processed) == (3, 3)
    assert 0.5 <= elapsed < 1.4


def test_a_run_that_started_without_redis_publishes_once_redis_is_back(ingest, store, monkeypatch):
    # given: Redis down when a following run starts, back (empty) after its first batch, while
    # events keep arriving
    from core.features.activity import ActivityConsumer
    from core.features.pipeline import consumer_run
    from core.features.services import CONSUMERS

    apply, client = ActivityConsumer.apply, hotstore.client
    arrivals = iter([[("u2", "b", "view")], [("u3", "c", "view")]])
    back = False

    def apply_while_ingesting(self, rows, after, upto):
        nonlocal back
        outcome = apply(self, rows, after, upto)
        if more := next(arrivals, None):
            ingest(more, prefix=f"late-{more[0][0]}")
        back = True
        return outcome

    monkeypatch.setattr(ActivityConsumer, "apply", apply_while_ingesting)
    monkeypatch.setattr(
        hotstore, "client", lambda purpose="serve": client(purpose) if back else None
    )
    ingest([("u1", "a", "view")])
    store.flushdb()

    # when
    run = consumer_run(CONSUMERS["activity"], trigger="test", follow=True, budget=100)

    # then: the run brought Redis up to date once it answered, and published what it folded
    # after, without waiting for the next run
    assert run.events_processed == 3
    assert int(store.get(hotstore.marker_key("activity"))) == run.watermark_to
    assert store.exists(hotstore.user_key("u1"), hotstore.user_key("u3")) == 2
    monkeypatch.setattr(hotstore, "client", client)
    assert [e.item_id for e in selectors.user_history(user_id="u3")] == ["c"]


def test_asking_whether_redis_is_back_costs_one_ping_per_cooldown(settings, monkeypatch):
    settings.FEATURES_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    hotstore.reset_clients()
    pings = []
    real_ping = redis.Redis.ping
    monkeypatch.setattr(redis.Redis, "ping", lambda self: pings.append(1) or real_ping(self))

    assert hotstore.answering() is None
    assert hotstore.answering() is None  # within the cooldown: not asked again

    assert len(pings) == 1
    hotstore.reset_clients()
