"""POST /api/v1/events: exactly-once storage, per-index errors, auto-insert, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from core.catalog.models import Item, User
from core.events import hooks
from core.events.models import Event, EventKey

pytestmark = pytest.mark.django_db

URL = "/api/v1/events"


def post(client, body, **extra):
    return client.post(URL, orjson.dumps(body), content_type="application/json", **extra)


def event(n: int, **fields) -> dict:
    base = {"event_id": f"e-{n}", "user_id": f"u-{n % 3}", "item_id": f"i-{n % 5}", "type": "view"}
    return base | fields


@pytest.fixture
def api(make_client):
    return make_client("events:write")


def test_single_event_is_stored_with_its_fields_and_creates_user_and_item(api):
    # given
    body = event(
        1,
        type="purchase",
        value=19.5,
        timestamp="2026-11-01T10:00:00Z",
        session_id="s-1",
        recommendation_id="rec-9",
        context={"page": "home"},
    )

    # when
    response = post(api, body)

    # then
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    stored = Event.objects.get()
    assert stored.event_id == "e-1"
    assert stored.user.external_id == "u-1"
    assert stored.item.external_id == "i-1"
    assert (stored.type, stored.value, stored.session_id) == ("purchase", 19.5, "s-1")
    assert stored.timestamp == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert stored.recommendation_id == "rec-9"
    assert stored.context == {"page": "home"}


def test_missing_timestamp_defaults_to_server_time(api):
    before = datetime.now(tz=UTC)

    post(api, event(1))

    stored = Event.objects.get()
    assert before - timedelta(seconds=1) <= stored.timestamp <= datetime.now(tz=UTC)


def test_batch_stores_valid_events_and_lists_bad_ones_by_index(api):
    # given: indexes 1 and 3 are bad
    batch = [
        event(0),
        event(1, type="teleport"),
        event(2),
        {"event_id": "e-3", "user_id": "ghost-user", "type": "view"},
        event(4, user_id="u-new"),
    ]

    # when
    response = post(api, {"events": batch})

    # then
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (3, 0, 2)
    assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [
        (1, "type", "unknown_type"),
        (3, "item_id", "required"),
    ]
    assert set(Event.objects.values_list("event_id", flat=True)) == {"e-0", "e-2", "e-4"}
    # a rejected event leaves no trace: neither its key nor its user
    assert not EventKey.objects.filter(event_id__in=["e-1", "e-3"]).exists()
    assert not User.objects.filter(external_id="ghost-user").exists()
    assert User.objects.filter(external_id="u-new").exists()


def test_retried_batch_changes_nothing(api):
    batch = [event(n) for n in range(50)]
    first = post(api, batch)

    second = post(api, batch)

    assert first.json()["accepted"] == 50
    assert second.status_code == 202
    assert second.json() == {"accepted": 0, "duplicates": 50, "rejected": 0, "errors": []}
    assert Event.objects.count() == 50
    assert User.objects.count() == 3
    assert Item.objects.count() == 5


def test_repeated_event_id_within_a_batch_counts_once(api):
    response = post(api, [event(1), event(1, type="click"), event(2)])

    assert response.json()["accepted"] == 2
    assert response.json()["duplicates"] == 1
    assert Event.objects.get(event_id="e-1").type == "view"


def test_all_invalid_is_400_in_error_shape_with_indexes(api):
    response = post(api, [event(0, type="nope"), {"event_id": 5.5}])

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_events"
    assert error["request_id"]
    assert error["details"]["rejected"] == 2
    fields = {(e["index"], e["field"]) for e in error["details"]["errors"]}
    assert {(0, "type"), (1, "event_id"), (1, "user_id"), (1, "item_id"), (1, "type")} <= fields
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"timestamp": "2999-01-01T00:00:00Z"}, "timestamp", "future_timestamp"),
        ({"timestamp": "yesterday"}, "timestamp", "invalid"),
        ({"value": "5"}, "value", "invalid"),
        ({"type": "rating"}, "value", "required"),
        ({"user_id": 1.5}, "user_id", "invalid"),
        ({"user_id": True}, "user_id", "invalid"),
        ({"item_id": ["x"]}, "item_id", "invalid"),
        ({"event_id": "x" * 129}, "event_id", "invalid"),
        ({"context": ["not", "an", "object"]}, "context", "invalid"),
        ({"context": {"blob": "x" * 5000}}, "context", "too_large"),
        ({"colour": "red"}, "colour", "unknown_field"),
        ({"session_id": {}}, "session_id", "invalid"),
    ],
)
def test_bad_field_is_rejected_by_name(api, fields, field, code):
    response = post(api, [event(0), event(1, **fields)])

    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    errors = response.json()["errors"]
    assert [(e["index"], e["field"], e["code"]) for e in errors] == [(1, field, code)]


def test_epoch_timestamps_and_integer_ids_are_accepted(api):
    response = post(api, [event(0, timestamp=1_700_000_000, user_id=42, item_id=7)])

    assert response.status_code == 202
    stored = Event.objects.get()
    assert stored.timestamp == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert stored.user.external_id == "42"


def test_event_type_from_settings_is_accepted(api, settings):
    settings.EVENT_TYPE_WEIGHTS = {**settings.EVENT_TYPE_WEIGHTS, "wishlist": 3.0}

    response = post(api, event(0, type="wishlist"))

    assert response.status_code == 202
    assert Event.objects.get().type == "wishlist"


def test_oversize_batch_is_413(api, settings):
    settings.EVENTS_MAX_BATCH = 10

    response = post(api, [event(n) for n in range(11)])

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not Event.objects.exists()


def test_oversize_body_is_413(api, settings):
    settings.API_MAX_BODY_BYTES = 2048

    response = post(api, [event(n) for n in range(100)])

    assert response.status_code == 413


def test_malformed_json_is_400(api):
    response = api.post(URL, b'{"event_id": ', content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_wrong_content_type_is_415(api):
    response = api.post(URL, b"event_id=1", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("body", [[], {"events": []}, {"events": "x"}, 42])
def test_empty_or_shapeless_body_is_400(api, body):
    response = post(api, body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_key_without_events_scope_is_403(make_client):
    response = post(make_client("catalog:write"), event(0))

    assert response.status_code == 403


def test_missing_key_is_401(make_client):
    response = post(make_client(), event(0))

    assert response.status_code == 401


def test_auto_insert_off_rejects_unknown_items_without_trace(api, settings):
    settings.CATALOG_AUTO_INSERT_ITEMS = False
    now = datetime.now(tz=UTC)
    Item.objects.create(external_id="known", created_at=now, updated_at=now)

    response = post(api, [event(0, item_id="known"), event(1, item_id="unknown", user_id="solo")])

    body = response.json()
    assert body["accepted"] == 1
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "unknown_item")]
    assert not Item.objects.filter(external_id="unknown").exists()
    assert not User.objects.filter(external_id="solo").exists()


def test_hook_runs_after_commit_with_the_batch(
    api, monkeypatch, django_capture_on_commit_callbacks
):
    calls = []
    monkeypatch.setattr(hooks, "events_ingested", lambda **kwargs: calls.append(kwargs))

    with django_capture_on_commit_callbacks(execute=True):
        post(api, [event(n) for n in range(6)])
    with django_capture_on_commit_callbacks(execute=True):
        post(api, [event(n) for n in range(6)])  # all duplicates: no call

    assert len(calls) == 1
    assert calls[0]["accepted"] == 6
    assert calls[0]["user_ids"] == set(User.objects.values_list("id", flat=True))


def test_schema_documents_the_ingestion_endpoints(client):
    schema = client.get("/api/v1/schema/").content.decode()

    for path in ["/api/v1/events:", "/api/v1/items/batch:", "/api/v1/users/{external_id}:"]:
        assert path in schema
    assert "IngestResult" in schema
