"""The API fuzzed from its own OpenAPI schema (schemathesis), in process through the WSGI app.

Every operation gets generated valid and invalid input with an admin key. It must never answer
5xx, every documented answer must match the schema, and every error must come in the API's error
shape. Bounded by FUZZ_EXAMPLES per operation so the whole run stays around a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.core import signals
from django.db import close_old_connections

# Until the dev dependencies pin it (schemathesis==4.32.5), a checkout without it skips this file.
schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis==4.32.5")
import hypothesis  # noqa: E402  (comes with schemathesis)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
)

from core.system.services import api_key_create  # noqa: E402
from recommender.wsgi import application  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)


@schemathesis.check
def errors_in_the_api_shape(ctx, response, case) -> None:
    if response.status_code >= 400:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"{response.status_code} not in the error shape: {body}"
        assert error.get("code") and error.get("message"), body


@pytest.fixture
def admin_headers(db, settings) -> Iterator[dict[str, str]]:
    settings.API_RATE_LIMITS = {"*": "off"}  # the fuzzer is faster than the generous defaults
    created = api_key_create(name="fuzz", scopes=["admin"])
    # Requests go through the real WSGI handler, whose end-of-request signal closes the database
    # connection, and with it the test's transaction. Django's test client detaches it the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield {"Authorization": f"Bearer {created.raw_key}"}
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case, admin_headers):
    case.call_and_validate(
        headers=admin_headers,
        checks=[
            not_a_server_error,
            content_type_conformance,
            response_schema_conformance,
            errors_in_the_api_shape,
        ],
    )


@pytest.mark.parametrize("event_type", [{}, [], ["view"], 3.5])
def test_an_event_type_that_is_not_a_string_is_a_row_error_not_a_500(make_client, event_type):
    # Found by the fuzzer: an object or list as `type` was hashed against the known types.
    client = make_client("events:write")
    event = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": event_type}

    response = client.post("/api/v1/events", event, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["errors"][0]["field"] == "type"
