import pytest

from core.catalog.models import Item
from core.recommendations.models import Impression
from core.registry.models import BusinessRule
from core.registry.selectors import business_rules_cache_clear

pytestmark = pytest.mark.django_db

URL = "/api/v1/users/{}/recommendations"


@pytest.fixture(autouse=True)
def _fresh_rules():
    business_rules_cache_clear()
    yield
    business_rules_cache_clear()


@pytest.fixture
def reader(make_client):
    return make_client("recommendations:read")


@pytest.fixture
def shopper(catalog, post_events):
    """u1 viewed item-1, clicked item-2, bought item-3; u2 made item-25 the most popular."""
    post_events(
        {"user_id": "u1", "item_id": "item-1", "type": "view"},
        {"user_id": "u1", "item_id": "item-2", "type": "click"},
        {"user_id": "u1", "item_id": "item-3", "type": "purchase"},
        {"user_id": "u2", "item_id": "item-25", "type": "view"},
        {"user_id": "u2", "item_id": "item-25", "type": "click"},
        {"user_id": "u2", "item_id": "item-25", "type": "purchase"},
    )
    return "u1"


def ids(response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def test_model_answers_a_ranked_list_without_the_history(serving, shopper, reader):
    response = reader.get(URL.format(shopper), {"count": 5})

    body = response.json()
    assert response.status_code == 200, body
    assert body["source"] == "model"
    assert body["model"] == {"name": "recommender", "version": 1}
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert not {"item-1", "item-2", "item-3"} & set(ids(response))
    assert len(body["recommendation_id"]) == 32


def test_the_same_history_is_answered_from_the_cache(serving, shopper, reader):
    first = reader.get(URL.format(shopper), {"count": 5})
    second = reader.get(URL.format(shopper), {"count": 5})

    assert first.json()["source"] == "model"
    assert second.json()["source"] == "cache"
    assert ids(first) == ids(second)


def test_pages_of_one_list_never_repeat_an_item(serving, shopper, reader):
    first = reader.get(URL.format(shopper), {"count": 5}).json()
    second = reader.get(
        URL.format(shopper),
        {"count": 5, "page": 2, "recommendation_id": first["recommendation_id"]},
    ).json()

    assert second["recommendation_id"] == first["recommendation_id"]
    assert [item["rank"] for item in second["items"]] == [6, 7, 8, 9, 10]
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}
    assert Impression.objects.filter(recommendation_id=first["recommendation_id"]).count() == 2


def test_a_page_of_someone_elses_or_an_unknown_list_is_404(serving, shopper, reader):
    first = reader.get(URL.format(shopper), {"count": 5}).json()

    other = reader.get(
        URL.format("u2"), {"page": 2, "recommendation_id": first["recommendation_id"]}
    )
    unknown = reader.get(URL.format(shopper), {"page": 2, "recommendation_id": "0" * 32})

    assert other.status_code == 404
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


def test_an_item_made_unavailable_disappears_at_once(serving, shopper, reader):
    """Without the feature store's hot set (Redis empty or down) the database says so."""
    top = ids(reader.get(URL.format(shopper), {"count": 5}))[0]
    Item.objects.filter(external_id=top).update(available=False)

    assert top not in ids(reader.get(URL.format(shopper), {"count": 5}))


def test_exclude_and_category_filters(serving, shopper, reader):
    top = ids(reader.get(URL.format(shopper), {"count": 3}))

    excluded = ids(reader.get(URL.format(shopper), {"count": 3, "exclude": ",".join(top)}))
    toys = reader.get(URL.format(shopper), {"count": 5, "category": "toys"})

    assert not set(top) & set(excluded)
    assert toys.status_code == 200
    assert ids(toys) and all(int(item.split("-")[1]) >= 20 for item in ids(toys))


def test_business_rules_pin_and_exclude(serving, shopper, reader):
    top = ids(reader.get(URL.format(shopper), {"count": 5}))
    BusinessRule.objects.create(name="hide", kind="exclude", item_ids=[top[0]])
    BusinessRule.objects.create(name="promo", kind="pin", item_ids=["item-39"], position=1)
    business_rules_cache_clear()

    after = ids(reader.get(URL.format(shopper), {"count": 5}))

    assert after[0] == "item-39"
    assert top[0] not in after


def test_unknown_shopper_gets_personal_results_from_the_session(serving, catalog, reader):
    response = reader.get(URL.format("newcomer"), {"count": 4, "session_items": "item-5,item-6"})

    body = response.json()
    assert response.status_code == 200, body
    assert body["source"] == "model"
    assert not {"item-5", "item-6"} & set(ids(response))


def test_unknown_shopper_without_history_gets_popular_items(serving, shopper, reader):
    response = reader.get(URL.format("stranger"), {"count": 4})

    assert response.status_code == 200
    assert response.json()["source"] == "fallback:popular"
    assert ids(response)[0] == "item-25"


def test_model_server_down_serves_a_fallback_not_an_error(serving, shopper, reader):
    from core.recommendations import model_gateway

    serving.MODEL_SERVER_TARGET = "127.0.0.1:1"
    model_gateway.reset_client()

    response = reader.get(URL.format("u2"), {"count": 4})

    assert response.status_code == 200
    assert response.json()["source"].startswith("fallback:")
    assert response.json()["items"]


def test_similar_items(serving, shopper, reader):
    response = reader.get("/api/v1/items/item-7/similar", {"count": 5})

    assert response.status_code == 200, response.json()
    assert response.json()["source"] == "model"
    assert len(ids(response)) == 5 and "item-7" not in ids(response)
    assert reader.get("/api/v1/items/no-such-item/similar").status_code == 404


def test_popular_by_window_and_category(serving, shopper, reader):
    overall = reader.get("/api/v1/popular", {"count": 3})
    recent = reader.get("/api/v1/popular", {"count": 3, "window": "24h", "category": "toys"})

    assert overall.status_code == 200 and ids(overall)[0] == "item-25"
    assert recent.status_code == 200 and ids(recent) == ["item-25"]


def test_rank_orders_the_candidates(serving, shopper, reader):
    candidates = ["item-10", "item-30", "item-11", "item-ghost"]

    response = reader.post(
        "/api/v1/rank", {"user_id": shopper, "item_ids": candidates}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert sorted(ids(response)) == ["item-10", "item-11", "item-30"]
    assert response.json()["source"] == "model"


@pytest.mark.parametrize(
    "params, field",
    [
        ({"count": 0}, "count"),
        ({"count": 5000}, "count"),
        ({"count": "many"}, "count"),
        ({"category": "no-such-category"}, "category"),
        ({"exclude": ",".join(f"x{i}" for i in range(600))}, "exclude"),
        ({"page": 0}, "page"),
        ({"recommendation_id": "not-hex"}, "recommendation_id"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(serving, catalog, reader, params, field):
    response = reader.get(URL.format("u1"), params)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["details"]


def test_bad_rank_bodies_are_400(serving, catalog, reader):
    missing = reader.post("/api/v1/rank", {"user_id": "u1"}, format="json")
    too_many = reader.post(
        "/api/v1/rank", {"user_id": "u1", "item_ids": [f"i{n}" for n in range(600)]}, format="json"
    )

    assert missing.status_code == 400 and "item_ids" in missing.json()["error"]["details"]
    assert too_many.status_code == 400


def test_reading_needs_the_scope(serving, catalog, make_client):
    response = make_client("events:write").get(URL.format("u1"))

    assert response.status_code == 403
