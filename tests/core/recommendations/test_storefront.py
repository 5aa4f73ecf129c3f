"""The /demo/ page's server side: off unless enabled, only with a narrowly scoped key."""

import json
import os
import subprocess
import sys

import pytest

from core.system.services import api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_key(settings):
    created = api_key_create(name="demo page", scopes=["events:write", "recommendations:read"])
    settings.DEMO_PAGE_API_KEY = created.raw_key
    return created.raw_key


def page_config(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="storefront-config" type="application/json">')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


def test_the_page_carries_the_demo_key_and_the_grid(client, settings, demo_key, catalog):
    settings.DEMO_PAGE_GRID_SIZE = 5

    response = client.get("/demo/")

    assert response.status_code == 200
    config = page_config(response)
    assert config["apiKey"] == demo_key
    assert [p["id"] for p in config["products"]] == [f"item-{i}" for i in range(5)]
    assert response["Cache-Control"].startswith("max-age=0")
    assert "no-store" in response["Cache-Control"]
    assert response["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in response["Content-Security-Policy"]


def test_the_page_is_not_found_when_disabled(client, settings, demo_key):
    settings.DEMO_PAGE_ENABLED = False

    assert client.get("/demo/").status_code == 404
    assert (
        client.get("/demo/items?ids=item-1", HTTP_AUTHORIZATION=f"Bearer {demo_key}").status_code
        == 404
    )


def test_the_page_says_how_to_configure_it_without_a_key(client, settings):
    settings.DEMO_PAGE_API_KEY = None

    response = client.get("/demo/")

    assert response.status_code == 503
    assert b"DEMO_PAGE_API_KEY is not set" in response.content
    assert b"create_api_key" in response.content


def test_a_broader_key_is_refused_and_never_shown(client, settings):
    broad = api_key_create(
        name="too broad", scopes=["events:write", "recommendations:read", "admin"]
    )
    settings.DEMO_PAGE_API_KEY = broad.raw_key

    response = client.get("/demo/")

    assert response.status_code == 503
    assert b"takes only" in response.content
    assert broad.raw_key.encode() not in response.content


def test_a_revoked_or_unknown_key_is_refused(client, settings):
    settings.DEMO_PAGE_API_KEY = "rk_deadbeef_not-a-real-key"

    response = client.get("/demo/")

    assert response.status_code == 503
    assert b"not an active API key" in response.content


def test_item_titles_need_the_demo_key(client, demo_key, catalog):
    anonymous = client.get("/demo/items?ids=item-1,item-2")
    other = api_key_create(name="other", scopes=["recommendations:read", "events:write"])
    wrong = client.get("/demo/items?ids=item-1", HTTP_AUTHORIZATION=f"Bearer {other.raw_key}")
    right = client.get(
        "/demo/items?ids=item-1,item-2,nope", HTTP_AUTHORIZATION=f"Bearer {demo_key}"
    )

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert sorted(item["id"] for item in right.json()["items"]) == ["item-1", "item-2"]
    assert right.json()["items"][0]["title"].startswith("Item ")


@pytest.mark.parametrize(
    ("env", "enabled"),
    [({}, "False"), ({"DEMO_PAGE_ENABLED": "true"}, "True")],
    ids=["default", "turned-on"],
)
def test_production_serves_the_page_only_when_turned_on(env, enabled, tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "DEMO_PAGE_ENABLED"}
    environment.update(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY="x" * 40,
        DJANGO_ALLOWED_HOSTS="shop.example",
        RECOMMENDER_VAR_DIR=str(tmp_path),
        **env,
    )
    code = "import recommender.settings as s; print(s.DEMO_PAGE_ENABLED)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == enabled
