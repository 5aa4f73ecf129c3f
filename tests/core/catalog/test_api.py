"""Items and users over HTTP: upsert, batch, get, list with cursor, delete, forget."""

from __future__ import annotations

import orjson
import pytest

from core.catalog import selectors
from core.catalog.models import Item, User
from core.events.models import Event, EventKey

pytestmark = pytest.mark.django_db


def send(client, method: str, url: str, body=None):
    data = orjson.dumps(body) if body is not None else None
    return getattr(client, method)(url, data, content_type="application/json")


@pytest.fixture
def api(make_client):
    return make_client("catalog:write")


SHOE = {
    "title": "Trail runner",
    "category": "shoes/running/trail",
    "tags": ["waterproof", "grip"],
    "price": 129.9,
    "available": True,
    "attributes": {"brand": "Acme", "sizes": [40, 41, 42]},
}


def test_put_creates_then_replaces_an_item(api):
    created = send(api, "put", "/api/v1/items/sku-1", SHOE)
    replaced = send(api, "put", "/api/v1/items/sku-1", {"title": "Trail runner 2", "price": "99"})

    assert created.status_code == 201
    assert created.json()["category"] == "shoes/running/trail"
    assert created.json()["price"] == 129.9
    assert replaced.status_code == 200
    fetched = send(api, "get", "/api/v1/items/sku-1").json()
    assert fetched["title"] == "Trail runner 2"
    assert fetched["price"] == 99.0
    assert fetched["tags"] == []  # PUT replaces the whole item
    assert Item.objects.count() == 1


def test_item_ids_may_contain_slashes_and_category_may_be_a_list(api):
    response = send(api, "put", "/api/v1/items/shop/42", {"category": ["Shoes", " Running "]})

    assert response.status_code == 201
    assert send(api, "get", "/api/v1/items/shop/42").json()["category"] == "Shoes/Running"


def test_get_unknown_item_is_404_in_error_shape(api):
    response = send(api, "get", "/api/v1/items/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price": -1}, "price"),
        ({"price": "cheap"}, "price"),
        ({"available": "yes"}, "available"),
        ({"tags": "a,b"}, "tags"),
        ({"attributes": {"blob": "x" * 20_000}}, "attributes"),
        ({"title": 5}, "title"),
        ({"id": "other"}, "id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_put_rejects_bad_fields_by_name(api, body, field):
    response = send(api, "put", "/api/v1/items/sku-1", body)

    assert response.status_code == 400
    errors = response.json()["error"]["details"]["errors"]
    assert errors[0]["field"] == field
    assert not Item.objects.exists()


def test_batch_upsert_counts_created_updated_and_rejected(api):
    send(api, "put", "/api/v1/items/a", SHOE)
    rows = [{"id": "a", "title": "A2"}, {"id": "b"}, {"id": "c", "price": "x"}, {"title": "no id"}]

    response = send(api, "post", "/api/v1/items/batch", {"items": rows})

    body = response.json()
    assert response.status_code == 200
    assert (body["created"], body["updated"], body["rejected"]) == (1, 1, 2)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(2, "price"), (3, "id")]
    assert Item.objects.get(external_id="a").title == "A2"


def test_batch_over_the_limit_is_413(api, settings):
    settings.CATALOG_MAX_BATCH = 3

    response = send(api, "post", "/api/v1/items/batch", [{"id": str(n)} for n in range(4)])

    assert response.status_code == 413


def test_list_pages_with_a_cursor_and_filters(api):
    rows = [
        {"id": f"i{n}", "category": "shoes/running" if n % 2 else "hats", "available": n % 3 != 0}
        for n in range(10)
    ]
    send(api, "post", "/api/v1/items/batch", rows)

    seen, cursor = [], None
    while True:
        url = "/api/v1/items?category=shoes&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = send(api, "get", url).json()
        seen += [item["id"] for item in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    available = send(api, "get", "/api/v1/items?available=false").json()["results"]

    assert seen == ["i1", "i3", "i5", "i7", "i9"]
    assert [item["id"] for item in available] == ["i0", "i3", "i6", "i9"]


def test_list_rejects_a_forged_cursor_and_a_bad_limit(api):
    assert send(api, "get", "/api/v1/items?cursor=garbage").status_code == 400
    assert send(api, "get", "/api/v1/items?limit=0").status_code == 400


def test_deleted_item_leaves_the_catalog_and_recommendations_at_once(api):
    send(api, "post", "/api/v1/items/batch", [{"id": "keep"}, {"id": "gone"}])
    gone_pk = Item.objects.get(external_id="gone").pk

    response = send(api, "delete", "/api/v1/items/gone")

    assert response.status_code == 204
    assert send(api, "get", "/api/v1/items/gone").status_code == 404
    assert [i["id"] for i in send(api, "get", "/api/v1/items").json()["results"]] == ["keep"]
    assert gone_pk in selectors.item_excluded_ids()
    assert not selectors.item_recommendable_queryset().filter(pk=gone_pk).exists()
    assert send(api, "delete", "/api/v1/items/gone").status_code == 404
    # named again, it comes back
    assert send(api, "put", "/api/v1/items/gone", {}).status_code == 200
    assert gone_pk not in selectors.item_excluded_ids()


def test_users_upsert_get_and_list(api):
    assert send(api, "put", "/api/v1/users/u1", {"attributes": {"tier": "gold"}}).status_code == 201
    send(api, "post", "/api/v1/users/batch", {"users": [{"id": "u2"}, {"id": "u1"}]})

    assert send(api, "get", "/api/v1/users/u1").json()["attributes"] == {}
    assert [u["id"] for u in send(api, "get", "/api/v1/users").json()["results"]] == ["u1", "u2"]


def test_deleting_a_user_forgets_them_and_reports_what_went(api, make_client):
    # given: two shoppers with events
    events_api = make_client("events:write")
    body = [
        {
            "event_id": f"e{n}",
            "user_id": "forget-me" if n < 3 else "stay",
            "item_id": "i",
            "type": "view",
        }
        for n in range(5)
    ]
    send(events_api, "post", "/api/v1/events", body)

    # when
    response = send(api, "delete", "/api/v1/users/forget-me")

    # then
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "forget-me"
    # other apps (features, cached recommendations) add their own counts by name
    assert answer["removed"] | {"user": 1, "events": 3} == answer["removed"]
    assert not User.objects.filter(external_id="forget-me").exists()
    assert Event.objects.count() == 2
    # a late retry of a forgotten event does not bring it back
    assert EventKey.objects.filter(event_id="e0").exists()
    retry = send(events_api, "post", "/api/v1/events", body[:1])
    assert retry.json()["duplicates"] == 1
    assert Event.objects.count() == 2
    assert not User.objects.filter(external_id="forget-me").exists()
    assert send(api, "delete", "/api/v1/users/forget-me").status_code == 404
    assert send(api, "delete", "/api/v1/users/nobody").status_code == 404


def test_catalog_needs_the_catalog_scope(make_client):
    response = make_client("events:write").get("/api/v1/items")

    assert response.status_code == 403
