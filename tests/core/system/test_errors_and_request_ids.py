import io

import pytest
from rest_framework.exceptions import ParseError

from core.system.exceptions import PayloadTooLarge
from core.system.parsers import OrjsonParser

pytestmark = pytest.mark.django_db


def assert_error_shape(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_unknown_route_is_404_in_error_shape(client):
    response = client.get("/api/v1/no-such-thing")

    assert response.status_code == 404
    assert_error_shape(response.json(), "not_found")


def test_wrong_method_is_405_in_error_shape(make_client):
    response = make_client("admin").delete("/api/v1/me")

    assert response.status_code == 405
    assert_error_shape(response.json(), "method_not_allowed")


def test_parser_rejects_malformed_json():
    with pytest.raises(ParseError, match="Malformed JSON"):
        OrjsonParser().parse(io.BytesIO(b'{"a": '))


def test_parser_rejects_empty_body():
    with pytest.raises(ParseError, match="Empty request body"):
        OrjsonParser().parse(io.BytesIO(b""))


def test_parser_rejects_oversize_body(settings):
    settings.API_MAX_BODY_BYTES = 1024
    with pytest.raises(PayloadTooLarge) as excinfo:
        OrjsonParser().parse(io.BytesIO(b"[" + b"1," * 1000 + b"1]"))
    assert excinfo.value.status_code == 413


def test_request_id_is_echoed(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")

    assert response["X-Request-ID"] == "abc-123"


def test_request_id_is_made_when_missing_or_unsafe(client):
    first = client.get("/healthz")["X-Request-ID"]
    unsafe = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"]

    assert len(first) == 32 and first != unsafe
    assert "\n" not in unsafe and len(unsafe) == 32


def test_error_body_carries_the_request_id(client):
    response = client.get("/api/v1/me", HTTP_X_REQUEST_ID="trace-7")

    assert response.status_code == 401
    assert response.json()["error"]["request_id"] == "trace-7"


def test_schema_and_docs_are_served(client):
    schema = client.get("/api/v1/schema/")
    docs = client.get("/api/v1/docs/")

    assert schema.status_code == 200
    assert b"/api/v1/me" in schema.content
    assert docs.status_code == 200
