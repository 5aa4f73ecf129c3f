import logging

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from core.system.logging import RequestIdFilter
from core.system.models import ApiKey
from core.system.services import api_key_create, api_key_revoke, hash_key

pytestmark = pytest.mark.django_db


def bearer(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_key_is_stored_hashed_and_shown_once():
    created = api_key_create(name="storefront", scopes="events:write recommendations:read")

    stored = ApiKey.objects.get(pk=created.api_key.pk)
    assert stored.key_hash == hash_key(created.raw_key)
    assert created.raw_key not in str(ApiKey.objects.values_list().get(pk=stored.pk))
    assert stored.scopes == ["events:write", "recommendations:read"]


def test_valid_key_reaches_endpoint():
    created = api_key_create(name="storefront", scopes=["events:write"])

    response = bearer(created.raw_key).get("/api/v1/me")

    assert response.status_code == 200
    assert response.json() == {
        "name": "storefront",
        "prefix": created.api_key.prefix,
        "scopes": ["events:write"],
    }


@pytest.mark.parametrize(
    "header, message",
    [
        (None, "Missing API key"),
        ("Bearer rk_00000000_not-a-real-key", "Invalid or revoked API key."),
        ("Token something", "Malformed Authorization header"),
        ("Bearer ", "Malformed Authorization header"),
    ],
)
def test_missing_or_invalid_key_is_401(header, message):
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/me")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] in {"not_authenticated", "authentication_failed"}
    assert message in error["message"]


def test_wrong_scope_is_403(rf):
    from core.system.permissions import HasScope

    created = api_key_create(name="reader", scopes=["recommendations:read"])

    class View:
        required_scope = "events:write"

    request = rf.get("/")
    request.user = created.api_key
    with pytest.raises(Exception) as excinfo:
        HasScope().has_permission(request, View())
    assert excinfo.value.status_code == 403
    assert "events:write" in str(excinfo.value.detail)


def test_admin_scope_grants_every_scope():
    created = api_key_create(name="ops", scopes=["admin"])
    assert created.api_key.has_scope("models:write")
    assert created.api_key.has_scope("events:write")


def test_revoked_key_is_401_at_once():
    created = api_key_create(name="storefront", scopes=["events:write"])
    client = bearer(created.raw_key)
    assert client.get("/api/v1/me").status_code == 200

    api_key_revoke(api_key=created.api_key)

    assert client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("scopes", [[], ["events:read"], ["admin", "everything"]])
def test_create_rejects_unknown_or_missing_scopes(scopes):
    with pytest.raises(ValueError, match="scope"):
        api_key_create(name="x", scopes=scopes)


def test_create_api_key_command_prints_the_key_once(capsys):
    call_command("create_api_key", "--name", "cli", "--scopes", "events:write,catalog:write")

    out = capsys.readouterr().out
    raw_key = out.strip().rsplit(" ", 1)[-1]
    key = ApiKey.objects.get(key_hash=hash_key(raw_key))
    assert key.scopes == ["catalog:write", "events:write"]


def test_create_api_key_command_names_bad_scope():
    with pytest.raises(CommandError, match=r"unknown scope.*nope.*valid scopes"):
        call_command("create_api_key", "--name", "cli", "--scopes", "nope")


def test_revoke_api_key_command():
    created = api_key_create(name="cli", scopes=["admin"])

    call_command("revoke_api_key", created.api_key.prefix)

    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is not None
    with pytest.raises(CommandError, match="No API key"):
        call_command("revoke_api_key", "ffffffff")


def test_a_key_never_reaches_the_log():
    created = api_key_create(name="storefront", scopes=["events:write"])
    record = logging.LogRecord(
        "x",
        logging.WARNING,
        __file__,
        1,
        "auth header was %s",
        (f"Bearer {created.raw_key}",),
        None,
    )

    RequestIdFilter().filter(record)

    assert created.raw_key not in record.getMessage()
    assert "[redacted]" in record.getMessage()


def test_admin_creates_key_and_shows_it_once(admin_client):
    response = admin_client.post(
        "/admin/system/apikey/add/",
        {"name": "from-admin", "scopes": ["events:write", "recommendations:read"]},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    raw_key = next(m for m in messages if "Copy it now" in m).rsplit(" ", 1)[-1]
    assert ApiKey.objects.get(key_hash=hash_key(raw_key)).name == "from-admin"
