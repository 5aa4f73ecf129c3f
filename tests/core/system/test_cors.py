import pytest

pytestmark = pytest.mark.django_db

SHOP = "https://shop.example.com"
PREFLIGHT = {
    "HTTP_ORIGIN": SHOP,
    "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
    "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "authorization, content-type",
}


@pytest.fixture
def shop_allowed(settings):
    settings.CORS_ALLOWED_ORIGINS = [SHOP, "http://localhost:3000"]


def test_a_configured_origin_gets_its_preflight_answered_without_a_key(shop_allowed, client):
    response = client.options("/api/v1/events", **PREFLIGHT)

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == SHOP
    allowed_headers = response["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert "Origin" in response["Vary"]


def test_a_configured_origin_can_read_api_responses(shop_allowed, make_client):
    client = make_client("recommendations:read")

    response = client.get("/api/v1/me", HTTP_ORIGIN=SHOP)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == SHOP
    assert "X-Request-ID" in response["Access-Control-Expose-Headers"]


@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "https://shop.example.com.evil.io", "null"]
)
def test_other_origins_get_no_cors_headers(shop_allowed, client, origin):
    preflight = client.options("/api/v1/events", **{**PREFLIGHT, "HTTP_ORIGIN": origin})
    plain = client.get("/api/v1/me", HTTP_ORIGIN=origin)

    for response in (preflight, plain):
        assert "Access-Control-Allow-Origin" not in response
        assert "Access-Control-Allow-Headers" not in response
    assert preflight.status_code == 401  # the API's own answer: no key


def test_nothing_outside_the_api_and_nothing_when_no_origin_is_configured(
    settings, shop_allowed, client
):
    assert "Access-Control-Allow-Origin" not in client.options("/healthz", **PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in client.get("/admin/login/", HTTP_ORIGIN=SHOP)

    settings.CORS_ALLOWED_ORIGINS = []
    response = client.options("/api/v1/events", **PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in response
    assert response.status_code == 401


def test_cors_origins_setting_names_its_variable_when_bad(monkeypatch):
    import importlib

    from django.core.exceptions import ImproperlyConfigured

    import recommender.settings.security as security

    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://shop.example.com/path")
    with pytest.raises(ImproperlyConfigured, match=r"^CORS_ALLOWED_ORIGINS: "):
        importlib.reload(security)
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://Shop.Example.com, http://localhost:3000")
    importlib.reload(security)
    assert security.CORS_ALLOWED_ORIGINS == ["https://shop.example.com", "http://localhost:3000"]
    monkeypatch.delenv("CORS_ALLOWED_ORIGINS")
    importlib.reload(security)
