"""What the serving path reads besides the model, and how cheaply: the shopper's history and
bought items from one feature-store read, availability from the hot set (kept in step by the
catalog's commit hooks), categories from a per-process cache, impressions written off the
request path."""

from __future__ import annotations

import gc
import pickle

import orjson
import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.features.services import features_catalog_sync
from core.recommendations import impressions, sources
from core.recommendations.models import Impression
from core.system.metrics import IMPRESSIONS_DROPPED

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/users/{}/recommendations"


@pytest.fixture
def reader(make_client):
    return make_client("recommendations:read")


@pytest.fixture
def writer(make_client):
    return make_client("catalog:write")


def ids(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [item["item_id"] for item in response.json()["items"]]


def put_item(writer, external_id: str, **fields):
    body = {"title": external_id, "category": "toys", **fields}
    response = writer.put(
        f"/api/v1/items/{external_id}", orjson.dumps(body), content_type="application/json"
    )
    assert response.status_code in (200, 201), response.json()


def test_bought_items_come_from_the_feature_store_without_a_query(serving, catalog, post_events):
    post_events(
        {"user_id": "u1", "item_id": "item-1", "type": "view"},
        {"user_id": "u1", "item_id": "item-3", "type": "purchase"},
    )

    with CaptureQueriesContext(connection) as queries:
        shopper = sources.shopper("u1")

    assert [entry.item_id for entry in shopper.history] == ["item-1", "item-3"]
    assert shopper.not_to_repeat == {"item-3"}
    assert not [q for q in queries.captured_queries if "events_event" in q["sql"]]


def test_purchases_older_than_the_stored_history_are_read_from_the_database(
    serving, catalog, post_events, settings
):
    settings.FEATURES_HISTORY_LENGTH = 2
    post_events(
        {"user_id": "u1", "item_id": "item-3", "type": "purchase"},
        {"user_id": "u1", "item_id": "item-4", "type": "view"},
        {"user_id": "u1", "item_id": "item-5", "type": "view"},
    )

    shopper = sources.shopper("u1")

    assert [entry.item_id for entry in shopper.history] == ["item-4", "item-5"]
    assert shopper.not_to_repeat == {"item-3"}


def test_unknown_shopper_has_no_history_and_nothing_excluded(serving, catalog):
    assert sources.shopper("nobody") == sources.Shopper()
    assert sources.shopper("") == sources.Shopper()


def test_availability_follows_the_catalogs_writes_through_the_hot_set(
    serving, catalog, writer, post_events, reader
):
    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    top = ids(reader.get(URL.format("u1"), {"count": 5}))[0]

    put_item(writer, top, available=False)
    with CaptureQueriesContext(connection) as queries:
        hidden = ids(reader.get(URL.format("u1"), {"count": 5}))
    put_item(writer, top, available=True)
    shown = ids(reader.get(URL.format("u1"), {"count": 5}))

    assert top not in hidden
    assert top in shown
    # Every candidate's category was read once, by the first request: none read again.
    assert not [q for q in queries.captured_queries if "catalog_item" in q["sql"]]


def test_a_deleted_item_disappears_at_once_and_an_unknown_one_is_never_shown(
    serving, catalog, writer, reader
):
    features_catalog_sync(full=True)
    assert sources.recommendable_categories(["item-1", "item-2", "ghost"]) == {
        "item-1": "books/scifi",
        "item-2": "books/scifi",
    }

    assert writer.delete("/api/v1/items/item-1").status_code in (200, 204)

    assert sources.recommendable_categories(["item-1", "item-2", "ghost"]) == {
        "item-2": "books/scifi"
    }


def test_impressions_are_written_by_the_writer_within_a_flush(serving, catalog, reader, settings):
    settings.RECOMMENDATIONS_IMPRESSION_FLUSH_MS = 50

    body = reader.get(URL.format("newcomer"), {"count": 3, "session_items": "item-5"}).json()

    impressions.flush()  # what the writer thread does every 50 ms (it may have done it already)
    row = Impression.objects.get(recommendation_id=body["recommendation_id"])
    assert row.item_ids == [item["item_id"] for item in body["items"]]
    assert row.source == body["source"]
    assert impressions.pending() == 0


def test_impressions_wait_while_the_database_is_away_and_overflow_is_counted(settings, monkeypatch):
    settings.RECOMMENDATIONS_IMPRESSION_FLUSH_MS = 60_000  # the thread stays out of the way
    settings.RECOMMENDATIONS_IMPRESSION_BUFFER = 100
    dropped_before = IMPRESSIONS_DROPPED._value.get()
    rows = [
        impressions.ImpressionRow(f"{n:032x}", page=1, surface="user", source="model")
        for n in range(103)
    ]

    def down(batch):
        raise RuntimeError("database down")

    # A writer of its own: the process's shared one may run a thread an earlier test started.
    writer = impressions._Writer()

    for row in rows:
        writer.record(row)
    monkeypatch.setattr(impressions, "write", down)
    with pytest.raises(RuntimeError):
        writer.flush()
    assert writer.pending() == 100  # nothing taken out by the failed write
    monkeypatch.undo()
    assert writer.flush() == 100

    assert IMPRESSIONS_DROPPED._value.get() - dropped_before == 3
    kept = set(Impression.objects.values_list("recommendation_id", flat=True))
    assert kept == {row.recommendation_id for row in rows[3:]}  # the oldest were dropped


def test_the_cache_reuses_one_redis_client(settings):
    if not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        pytest.skip("the suite runs without Redis")
    client = cache._cache
    assert client.get_client("a") is client.get_client("b")
    cache.set("reuse", 1)
    assert cache.get("reuse") == 1


def test_forgetting_a_shopper_removes_their_impressions_and_cached_lists(
    serving, catalog, post_events, reader, make_client
):
    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    first = reader.get(URL.format("u1"), {"count": 3}).json()
    other = reader.get(URL.format("u2"), {"count": 3, "session_items": "item-2"}).json()
    assert first["source"] == "model"
    assert Impression.objects.filter(user_external_id="u1").count() == 1

    answer = make_client("catalog:write").delete("/api/v1/users/u1")

    assert answer.status_code == 200, answer.json()
    # one impression + the stored list + the last good list
    assert answer.json()["removed"]["recommendations"] == 3
    assert not Impression.objects.filter(user_external_id="u1").exists()
    page = {"count": 3, "page": 2, "recommendation_id": first["recommendation_id"]}
    assert reader.get(URL.format("u1"), page).status_code == 404
    # Someone else's list is untouched.
    page = {"count": 3, "page": 2, "recommendation_id": other["recommendation_id"]}
    assert reader.get(URL.format("u2"), page).status_code == 200


def test_one_round_trip_writes_entries_with_their_own_timeouts_and_an_index(settings):
    from core.system.cache import Entry, delete_indexed, write_many

    write_many(
        [Entry("a", [1], 60, indexed=True), Entry("b", {"x": 2}, 3600), Entry("c", 3, 60, True)],
        index="idx",
    )

    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ([1], {"x": 2}, 3)
    assert delete_indexed("idx") == 2
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, {"x": 2}, None)
    assert delete_indexed("idx") == 0


@pytest.mark.parametrize(
    "query",
    [
        "",
        "count=10",
        "count=1&page=3",
        "count=010",
        "session_items=item-1,item-2&exclude=item-3",
        "session_items=item-1,,item-2, item-4 &count=7",
        "exclude=",
        f"recommendation_id={'ab' * 16}&page=2",
        # everything below is left to the serializer (None), which answers or refuses it
        "count=0",
        "count=100000",
        "count=-1",
        "count=1.0",
        "count=²",
        "count=10&count=11",
        "category=toys",
        "unknown=1",
        "session_items=a b",
        f"session_items={','.join(['x'] * 10_000)}",
        "recommendation_id=XYZ",
        "page=0",
    ],
)
def test_the_plain_query_parser_agrees_with_the_serializer(query):
    from django.http import QueryDict
    from rest_framework.exceptions import ValidationError

    from core.recommendations.api import UserRecommendationsApi, _plain_query

    serializer_class = UserRecommendationsApi.QuerySerializer
    plain = _plain_query(QueryDict(query), serializer_class)
    serializer = serializer_class(data=QueryDict(query))
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError:
        assert plain is None
        return
    if plain is not None:
        expected = {k: ([] if v == "" else v) for k, v in serializer.validated_data.items()}
        assert plain == expected


def test_a_known_shoppers_answer_needs_no_sql_once_the_hot_set_is_ready(
    serving, catalog, post_events, reader
):
    post_events(
        {"user_id": "u1", "item_id": "item-1", "type": "view"},
        {"user_id": "u1", "item_id": "item-2", "type": "purchase"},
    )
    features_catalog_sync(full=True)
    reader.get(URL.format("u1"), {"count": 5})  # fills the model cache and the category cache

    with CaptureQueriesContext(connection) as queries:
        uncached = reader.get(URL.format("u1"), {"count": 5, "session_items": "item-7"})
        cached = reader.get(URL.format("u1"), {"count": 5})

    assert uncached.json()["source"] == "model"
    assert cached.json()["source"] == "cache"
    assert "item-2" not in ids(cached)
    # Impressions are written in the request here (the suite's flush interval is 0): nothing else.
    other = [
        q["sql"]
        for q in queries.captured_queries
        if "recommendations_impression" not in q["sql"] and q["sql"] not in ("BEGIN", "COMMIT")
    ]
    assert other == []


def test_recommendations_go_on_while_postgresql_is_out_of_reach(
    serving, catalog, post_events, reader, monkeypatch
):
    """What `make chaos` (fault "postgres") showed: the read path must not need the database."""
    from django.db import OperationalError

    from core.registry import selectors as registry_selectors
    from core.system import services as system_services

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    warm = reader.get(URL.format("u1"), {"count": 5})
    assert warm.json()["source"] == "model"
    # Every per-process cache past its time: the next read would ask the database.
    system_services._cache._entries = {
        key: (0.0, value) for key, (_, value) in system_services._cache._entries.items()
    }
    monkeypatch.setattr(
        registry_selectors, "_rules_cache", (0.0, registry_selectors._rules_cache[1])
    )

    def database_down(execute, sql, params, many, context):
        raise OperationalError("connection refused")

    with connection.execute_wrapper(database_down):
        cached = reader.get(URL.format("u1"), {"count": 5})
        fresh = reader.get(URL.format("u1"), {"count": 5, "session_items": "item-3"})
        newcomer = reader.get(URL.format("newcomer"), {"count": 5, "session_items": "item-4"})

    assert [cached.json()["source"], fresh.json()["source"]] == ["cache", "model"]
    assert ids(cached) == ids(warm)
    assert newcomer.status_code == 200 and newcomer.json()["source"] == "model"


def test_availability_flags_are_reused_until_the_hot_set_changes(
    serving, catalog, post_events, reader, writer, monkeypatch
):
    import redis as redis_lib

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    first = ids(reader.get(URL.format("u1"), {"count": 5}))
    commands: list[str] = []
    real_execute = redis_lib.client.Pipeline.execute

    def spy(self, *args, **kwargs):
        commands.extend(str(command[0][0]) for command in self.command_stack)
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", spy)
    again = ids(reader.get(URL.format("u1"), {"count": 5}))
    assert again == first
    assert "SMISMEMBER" not in commands  # the same version: this process's flags

    put_item(writer, first[0], available=False)  # its commit hook bumps the version
    commands.clear()
    after = ids(reader.get(URL.format("u1"), {"count": 5}))

    assert first[0] not in after
    assert "SMISMEMBER" in commands


def test_writes_sent_without_waiting_land_and_a_failed_one_leaves_the_next_alone(settings, caplog):
    if not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        pytest.skip("the suite runs without Redis")
    from core.system.cache import Entry, flush_deferred, write_many

    cache.set("not-a-set", "text")
    # The index is a string key: Redis refuses the SADD, which is read and logged later.
    write_many([Entry("d1", [1], 60, indexed=True)], index="not-a-set", wait=False)
    write_many([Entry("d2", {"x": 2}, 60)], wait=False)
    flush_deferred()

    assert (cache.get("d1"), cache.get("d2")) == ([1], {"x": 2})
    assert "a deferred cache write failed" in caplog.text


def test_a_known_shoppers_cached_answer_takes_one_read_and_one_unanswered_write(
    serving, catalog, post_events, reader, monkeypatch, settings
):
    if not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        pytest.skip("the suite runs without Redis")
    import redis as redis_lib

    from core.system import cache as cache_module

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    first = reader.get(URL.format("u1"), {"count": 5})
    assert first.json()["source"] == "model"  # the answer, and the shopper's last answer, stored
    reads: list[list[str]] = []
    sends: list[list[str]] = []
    real_execute = redis_lib.client.Pipeline.execute
    real_command = redis_lib.Redis.execute_command
    real_send = cache_module._Deferred.send

    def pipeline(self, *args, **kwargs):
        reads.append([str(command[0][0]).upper() for command in self.command_stack])
        return real_execute(self, *args, **kwargs)

    def command(self, *args, **kwargs):
        reads.append([str(args[0]).upper()])
        return real_command(self, *args, **kwargs)

    def send(self, pool, commands):
        sends.append([str(command[0]) for command in commands])
        return real_send(self, pool, commands)

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", pipeline)
    monkeypatch.setattr(redis_lib.Redis, "execute_command", command)
    monkeypatch.setattr(cache_module._Deferred, "send", send)
    cached = reader.get(URL.format("u1"), {"count": 5})

    assert cached.json()["source"] == "cache"
    assert ids(cached)[:3] == ids(first)[:3]
    # The shopper's features, the hot set's version, the model generation and the last answer:
    # one round trip; no separate look-up of the cached answer.
    feature_reads = [read for read in reads if "ZRANGE" in read]
    assert feature_reads == [["MGET", "ZRANGE"]]
    assert [read for read in reads if "ZRANGE" not in read] == []
    assert len(sends) == 1 and sends[0][0] == "SET"  # the stored list, sent unanswered

    post_events({"user_id": "u1", "item_id": "item-4", "type": "click"})
    assert reader.get(URL.format("u1"), {"count": 5}).json()["source"] == "model"


def test_a_last_answer_stored_before_it_kept_its_key_still_serves_as_a_fallback():
    from core.recommendations.model_gateway import LastAnswer

    old = LastAnswer(3, [("item-1", 0.5), ("item-2", 0.25)])
    new = LastAnswer(3, ("model:rec:k", 3, "recommender", 2, [("item-9", 0.75)]))

    assert old.items() == [("item-1", 0.5), ("item-2", 0.25)] and old.answer("model:rec:k") is None
    assert new.items() == [("item-9", 0.75)]
    answer = new.answer("model:rec:k")
    assert answer is not None and answer.was_last and answer.model_version == 2
    assert LastAnswer(4, new.value).answer("model:rec:k") is None  # another model generation
    assert new.answer("model:rec:other") is None  # another history


def test_a_last_answer_keeps_its_items_pickled_until_they_are_used():
    from core.recommendations.model_gateway import LastAnswer, ModelAnswer, PickledCandidates
    from core.recommendations.ranking import Candidate

    made = ModelAnswer([Candidate("item-9", 0.75), Candidate("item-4", 0.5)], "m", 2, False)
    made = ModelAnswer(made.candidates, "m", 2, False, key="model:rec:k", generation=3)
    value = made.last_value()
    assert isinstance(value[4], bytes)

    last = LastAnswer(3, value)
    answer = last.answer("model:rec:k")
    assert answer is not None and isinstance(answer.candidates, PickledCandidates)
    assert answer.candidates._items is None  # not unpickled yet
    assert list(answer.candidates) == [("item-9", 0.75), ("item-4", 0.5)]
    assert answer.candidates[1].item_id == "item-4" and len(answer.candidates) == 2
    assert answer.last_value()[4] is value[4]  # written again as it was read
    assert last.items() == [("item-9", 0.75), ("item-4", 0.5)]  # the fallback tier's view


def test_categories_are_read_again_in_the_background_while_requests_use_the_old_ones(
    serving, catalog, monkeypatch
):
    import time

    from core.catalog.models import Item

    features_catalog_sync(full=True)
    assert sources.recommendable_categories(["item-1"], unavailable_version=1) == {
        "item-1": "books/scifi"
    }
    Item.objects.filter(external_id="item-1").update(category="toys/robots")
    monkeypatch.setattr(sources, "_categories_until", 0.0)  # the cache's lifetime is over

    # This request starts the refresh and is answered from the map it has, without waiting.
    assert sources.recommendable_categories(["item-1"], unavailable_version=1) == {
        "item-1": "books/scifi"
    }
    deadline = time.monotonic() + 10
    while sources.recommendable_categories(["item-1"], unavailable_version=1) != {
        "item-1": "toys/robots"
    }:
        assert time.monotonic() < deadline, "the refresh never replaced the category"
        time.sleep(0.02)


def test_an_unreadable_last_answer_is_passed_over_for_the_cache(
    serving, catalog, post_events, reader, settings
):
    needs_redis(settings)
    from core.recommendations.services import _last_good_key
    from core.system.cache import redis_key

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    first = reader.get(URL.format("u1"), {"count": 5})
    cache._cache.get_client(write=True).set(redis_key(_last_good_key("u1")), b"\x80not a pickle")

    again = reader.get(URL.format("u1"), {"count": 5})

    assert again.status_code == 200 and again.json()["source"] == "cache"
    assert ids(again) == ids(first)


def test_a_repeat_reuses_its_finished_list_until_something_it_was_made_from_changes(
    serving, catalog, post_events, reader, writer, monkeypatch
):
    from core.recommendations import services
    from core.registry.models import BusinessRule
    from core.registry.selectors import business_rules_cache_clear

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    made: list[int] = []
    real_finish_list = services._finish_list

    def finish_list(ranked, *args, **kwargs):
        made.append(len(ranked))
        return real_finish_list(ranked, *args, **kwargs)

    monkeypatch.setattr(services, "_finish_list", finish_list)
    first = reader.get(URL.format("u1"), {"count": 5}).json()
    again = reader.get(URL.format("u1"), {"count": 5}).json()

    assert len(made) == 1  # the repeat: the same answer, exclusions, rules and availability
    gc.collect()
    kept = list(services._finished.values())[-1]  # this request's, the last one kept
    assert kept.items and not any(gc.is_tracked(pair) for pair in kept.items)  # no GC cost
    assert again["source"] == "cache" and again["items"] == first["items"]
    assert again["recommendation_id"] != first["recommendation_id"]
    top = first["items"][0]["item_id"]

    assert top not in ids(reader.get(URL.format("u1"), {"count": 5, "exclude": top}))
    assert len(made) == 2

    BusinessRule.objects.create(name="no top", kind="exclude", item_ids=[top])
    business_rules_cache_clear()
    assert top not in ids(reader.get(URL.format("u1"), {"count": 5}))
    assert len(made) == 3

    BusinessRule.objects.all().delete()
    business_rules_cache_clear()
    put_item(writer, top, available=False)  # the hot set's version changes
    assert top not in ids(reader.get(URL.format("u1"), {"count": 5}))
    assert len(made) == 4


def test_pages_of_a_reused_list_follow_on_and_an_older_stored_list_still_pages(
    serving, catalog, post_events, reader
):
    from core.recommendations import services

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)
    reader.get(URL.format("u1"), {"count": 4})
    first = reader.get(URL.format("u1"), {"count": 4}).json()  # from this process's finished list
    second = reader.get(
        URL.format("u1"), {"count": 4, "page": 2, "recommendation_id": first["recommendation_id"]}
    ).json()
    assert [item["rank"] for item in second["items"]] == [5, 6, 7, 8]
    assert not {item["item_id"] for item in first["items"]} & {
        item["item_id"] for item in second["items"]
    }

    # A list stored before its items were kept pickled: its pairs as they were.
    cache.set(
        services._list_key("0" * 32),
        {
            "surface": "user",
            "user_id": "u1",
            "model_name": "m",
            "model_version": 1,
            "source": "model",
            "items": [(f"item-{i}", 1.0 / (i + 1)) for i in range(10, 20)],
        },
    )
    older = reader.get(URL.format("u1"), {"count": 3, "page": 2, "recommendation_id": "0" * 32})
    assert ids(older) == ["item-13", "item-14", "item-15"]


# A cached value this version cannot read (another version's format, or damage) is a miss,
# logged, never a 5xx. Each below unpickles, but holds what this version does not expect.
UNREADABLE_PAIRS = [
    pytest.param(b"\x80not a pickle", id="not-a-pickle"),
    pytest.param(pickle.dumps("a string"), id="not-pairs"),
    pytest.param(pickle.dumps([("item-2",)]), id="short-pairs"),
    pytest.param([("item-2", "high", "x")], id="long-pairs-unpacked"),
]


def redis_keys(pattern: str) -> list[bytes]:
    return list(cache._cache.get_client(write=True).scan_iter(match=pattern))


def needs_redis(settings) -> None:
    if not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        pytest.skip("the suite runs without Redis")


def unreadable_forms(items_at: int) -> list:
    """Replacements for a cached tuple whose items stand at `items_at`: a string, the tuple cut
    short, and the tuple with each of UNREADABLE_PAIRS for items."""
    return [
        pytest.param(lambda value: "a string", id="string"),
        pytest.param(lambda value: value[: items_at - 1], id="short-tuple"),
        *[
            pytest.param(lambda value, items=p.values[0]: (*value[:items_at], items), id=p.id)
            for p in UNREADABLE_PAIRS
        ],
    ]


@pytest.mark.parametrize("replace", unreadable_forms(3))  # (generation, name, version, items)
def test_a_cached_model_answer_this_version_cannot_read_is_asked_again(
    serving, catalog, post_events, reader, settings, replace
):
    from core.recommendations.services import _last_good_key

    needs_redis(settings)
    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    first = reader.get(URL.format("u1"), {"count": 5})
    (key,) = redis_keys("*model:rec:*")
    client = cache._cache.get_client(write=True)
    client.set(key, pickle.dumps(replace(pickle.loads(client.get(key)))))
    cache.delete(_last_good_key("u1"))  # or the last answer would stand in for the cached one

    again = reader.get(URL.format("u1"), {"count": 5})

    assert again.status_code == 200, again.json()
    assert again.json()["source"] == "model"
    assert ids(again) == ids(first)


@pytest.mark.parametrize("replace", unreadable_forms(4))  # (key, generation, name, version, items)
@pytest.mark.parametrize("kept", [True, False], ids=["list-kept", "list-not-kept"])
def test_a_last_answer_this_version_cannot_read_is_passed_over(
    serving, catalog, post_events, reader, settings, replace, kept
):
    from core.recommendations import services

    needs_redis(settings)
    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    features_catalog_sync(full=True)  # the hot set's version: finished lists can be kept
    first = reader.get(URL.format("u1"), {"count": 5})
    written = cache.get(services._last_good_key("u1"))
    cache.set(services._last_good_key("u1"), replace(written))
    if not kept:  # another process: the last answer's items must be read
        services._finished.clear()

    again = reader.get(URL.format("u1"), {"count": 5})

    assert again.status_code == 200, again.json()
    assert again.json()["source"] == "cache"
    assert ids(again) == ids(first)
    if not kept:  # read, found unreadable, dropped; the next request writes a readable one
        reader.get(URL.format("u1"), {"count": 5})
        assert cache.get(services._last_good_key("u1")) == written


@pytest.mark.parametrize(
    "replace",
    [
        pytest.param(lambda stored: "a string", id="string"),
        pytest.param(lambda stored: {"surface": "user"}, id="missing-fields"),
        *[
            pytest.param(lambda stored, items=p.values[0]: {**stored, "items": items}, id=p.id)
            for p in UNREADABLE_PAIRS
        ],
    ],
)
def test_a_stored_list_this_version_cannot_read_is_an_expired_list(
    serving, catalog, post_events, reader, replace
):
    from core.recommendations.services import _list_key

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    first = reader.get(URL.format("u1"), {"count": 2}).json()
    key = _list_key(first["recommendation_id"])
    cache.set(key, replace(cache.get(key)))

    page = reader.get(
        URL.format("u1"), {"count": 2, "page": 2, "recommendation_id": first["recommendation_id"]}
    )

    assert page.status_code == 404, page.json()
    assert page.json()["error"]["code"] == "not_found"
    assert "expired" in page.json()["error"]["message"]


@pytest.mark.parametrize("items", UNREADABLE_PAIRS)
def test_with_the_model_down_an_unreadable_last_answer_gives_way_to_the_next_fallback(
    serving, catalog, post_events, reader, items
):
    from core.recommendations import model_gateway, services

    post_events({"user_id": "u1", "item_id": "item-1", "type": "view"})
    reader.get(URL.format("u1"), {"count": 5})
    last = cache.get(services._last_good_key("u1"))
    cache.set(services._last_good_key("u1"), (*last[:4], items))
    serving.MODEL_SERVER_TARGET = "127.0.0.1:1"
    model_gateway.reset_client()

    response = reader.get(URL.format("u1"), {"count": 5, "session_items": "item-2"})

    assert response.status_code == 200, response.json()
    assert response.json()["source"].startswith("fallback:")
    assert response.json()["source"] != "fallback:last_good"
