"""The database out of reach is a 503 with a retry, not a 500 (found by `make chaos`, fault
"postgres": events arriving while PostgreSQL restarted were 500s). The real outage is produced in
tests/core/system/test_resilience.py; here the driver's errors are raised where a view meets them,
since a test cannot stop the shared PostgreSQL the rest of the suite uses."""

import psycopg
import pytest
from django.db import OperationalError
from django.test import RequestFactory

from core.system import errors

pytestmark = pytest.mark.django_db

EVENT = {"event_id": "e-1", "user_id": "u-1", "item_id": "i-1", "type": "view"}


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("connection failed: Connection refused"),  # Django's wrapper
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("the connection is lost"),  # the COPY path's own cursor
    ],
    ids=["django", "psycopg-admin-shutdown", "psycopg-connection-lost"],
)
def test_api_answers_503_with_retry_after_when_the_database_is_down(
    make_client, monkeypatch, error
):
    # given
    def database_down(**kwargs):
        raise error

    monkeypatch.setattr("core.events.api.events_ingest", database_down)

    # when
    response = make_client("events:write").post("/api/v1/events", EVENT, format="json")

    # then
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    body = response.json()
    assert body["error"]["code"] == "database_unavailable"
    assert set(body["error"]) == {"code", "message", "details", "request_id"}


def test_handler500_answers_503_for_a_database_error_outside_drf():
    request = RequestFactory().get("/somewhere")
    try:
        raise OperationalError("server closed the connection unexpectedly")
    except OperationalError:
        response = errors.server_error(request)

    assert response.status_code == 503
    assert response["Retry-After"] == "2"


def test_handler500_stays_500_for_a_bug():
    request = RequestFactory().get("/somewhere")
    try:
        raise ValueError("a bug")
    except ValueError:
        response = errors.server_error(request)

    assert response.status_code == 500
