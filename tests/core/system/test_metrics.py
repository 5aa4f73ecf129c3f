import pytest

from core.system.services import api_key_create

pytestmark = pytest.mark.django_db


def scrape(client, **extra) -> str:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with `prefix` (name and some labels)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


HEALTHZ = 'recommender_http_requests_total{method="GET",route="healthz"'


def test_requests_are_counted_by_route_not_by_raw_path(client):
    before = value(scrape(client), HEALTHZ)

    client.get("/healthz")
    client.get("/healthz")
    client.get("/api/v1/no-such-route/12345")
    text = scrape(client)

    assert value(text, HEALTHZ) == before + 2
    assert 'route="unmatched"' in text
    # No label holds the raw path (its digits alone could match a sample's timestamp by chance).
    assert "no-such-route" not in text


def test_ingest_outcomes_are_counted(client, make_client):
    writer = make_client("events:write")
    accepted = 'recommender_events_ingested_total{outcome="accepted"}'
    rejected = 'recommender_events_ingested_total{outcome="rejected"}'
    before = value(scrape(client), accepted), value(scrape(client), rejected)

    writer.post(
        "/api/v1/events",
        [
            {"event_id": "m-1", "user_id": "u", "item_id": "i", "type": "view"},
            {"event_id": "m-2", "user_id": "u", "item_id": "i", "type": "nope"},
        ],
        format="json",
    )
    text = scrape(client)

    assert value(text, accepted) == before[0] + 1
    assert value(text, rejected) == before[1] + 1


def test_shared_state_gauges_are_reported(client):
    text = scrape(client)

    assert "recommender_feature_lag_events" in text
    assert "recommender_celery_queue_depth" in text


def test_metrics_are_closed_to_other_networks_without_an_admin_key(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = []
    reader = api_key_create(name="r", scopes=["recommendations:read"]).raw_key
    admin = api_key_create(name="a", scopes=["admin"]).raw_key

    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {reader}").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {admin}").status_code == 200
    assert client.get("/metrics").json()["error"]["code"] == "forbidden"
