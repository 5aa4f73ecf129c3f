"""SQL injection and oversized input on every API endpoint.

Every URL pattern under /api/v1/ and every method its view implements is tried with classic
injection strings in the path ids, the query parameters and the JSON fields (the fields the OpenAPI
schema documents for that body), then with oversized strings, numbers, nesting and bodies. The API
must never answer 5xx, every error must come in the error shape, and a refused request or a read
must leave the database as it was.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from django.apps import apps
from django.db import connection
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from core.system.services import api_key_create

pytestmark = pytest.mark.django_db

INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE catalog_item; --",
    '" OR 1=1 --',
    "x' UNION SELECT key_hash, NULL FROM system_apikey --",
    "1' AND pg_sleep(5) IS NULL --",
    "%27%20OR%201%3D1",
    "nul\x00byte",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "\u202e\ufeff\U0001d54f",
]
HUGE_STRING = "A" * 200_000
HUGE_INT = 10**30
METHODS = ("get", "post", "put", "patch", "delete")
SKIPPED = {"api/v1/schema/", "api/v1/docs/"}  # documentation, no input


def _api_routes() -> list[tuple[str, type, str]]:
    def walk(resolver: URLResolver, prefix: str):
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern

    routes = []
    for route, pattern in walk(get_resolver(), ""):
        view = getattr(pattern.callback, "cls", None)
        if not route.startswith("api/v1/") or route in SKIPPED or view is None:
            continue
        routes += [(route, view, method) for method in METHODS if hasattr(view, method)]
    return routes


ROUTES = _api_routes()
ROUTE_IDS = [f"{method.upper()} {route}" for route, _, method in ROUTES]
_schema: dict[str, Any] | None = None


def openapi() -> dict[str, Any]:
    global _schema
    if _schema is None:
        _schema = SchemaGenerator().get_schema(request=None, public=True)
    return _schema


def operation(route: str, method: str) -> dict[str, Any]:
    path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    return openapi()["paths"].get(path, {}).get(method, {})


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = openapi()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        return resolve(schema["oneOf"][0])
    return schema


def fill(schema: dict[str, Any], text: str, number: int, depth: int = 0) -> Any:
    """A value of the documented shape with `text` in every string and `number` in every int."""
    schema = resolve(schema)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 3:
            return {}
        props = schema.get("properties", {})
        return {name: fill(sub, text, number, depth + 1) for name, sub in props.items()} or {
            text: text
        }
    if kind == "array":
        return [fill(schema.get("items", {}), text, number, depth + 1)]
    if kind in ("integer", "number"):
        return number
    if kind == "boolean":
        return text
    return text


def body_for(route: str, method: str, text: str, number: int) -> Any:
    content = operation(route, method).get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return fill(schema, text, number) if schema else {"id": text, "name": text}


def query_for(route: str, method: str, text: str) -> dict[str, str]:
    names = {
        p["name"] for p in operation(route, method).get("parameters", []) if p["in"] == "query"
    }
    return {name: text for name in names | {"limit", "cursor", "id"}}


def path_for(route: str, text: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?\w+>", lambda _: quote(text, safe=""), route)


# Serving a recommendation records what was shown: a write on read, by design.
WRITTEN_ON_READ = {"recommendations.Impression"}
# Bodies read by the JSON parser (the model push takes raw archives, with its own limit).
JSON_BODIES = {
    ("api/v1/events", "post"),
    ("api/v1/rank", "post"),
    ("api/v1/items/batch", "post"),
    ("api/v1/users/batch", "post"),
    ("api/v1/items/<path:external_id>", "put"),
    ("api/v1/users/<path:external_id>", "put"),
}


def table_counts() -> dict[str, int]:
    """Rows per model, in one query (this runs around every request)."""
    models = [m for m in apps.get_models() if m._meta.managed and not m._meta.proxy]
    quote_name = connection.ops.quote_name
    counts = ", ".join(f"(SELECT count(*) FROM {quote_name(m._meta.db_table)})" for m in models)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {counts}")  # table names come from the models
        row = cursor.fetchone()
    return {model._meta.label: count for model, count in zip(models, row, strict=True)}


def unchanged(before: dict[str, int], after: dict[str, int], *, read: bool) -> bool:
    ignored = WRITTEN_ON_READ if read else set()
    return {k: v for k, v in before.items() if k not in ignored} == {
        k: v for k, v in after.items() if k not in ignored
    }


@pytest.fixture
def admin_client(db) -> APIClient:
    client = APIClient()
    created = api_key_create(name="hostile", scopes=["admin"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
    # something to find, change or leak
    items = client.post("/api/v1/items/batch", [{"id": "i1", "category": "a/b"}], format="json")
    users = client.post("/api/v1/users/batch", [{"id": "u1"}], format="json")
    assert (items.status_code, users.status_code) == (200, 200), items.content + users.content
    return client


def send(client: APIClient, method: str, path: str, *, query=None, body=None, raw=None):
    kwargs: dict[str, Any] = {}
    if raw is not None:
        kwargs.update(data=raw, content_type="application/json")
    elif body is not None:
        kwargs.update(data=body, format="json")
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(str(v), safe='')}" for k, v in query.items())
    return getattr(client, method)(path, **kwargs)


def assert_answered_safely(response, method: str, before: dict[str, int]) -> None:
    request = f"{response.request['REQUEST_METHOD']} {response.request['PATH_INFO'][:120]}"
    assert response.status_code < 500, f"{request}: {response.status_code} {response.content[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["code"] and error["message"], request
    if response.status_code >= 400 or method == "get":
        read = method == "get" and response.status_code < 400
        assert unchanged(before, table_counts(), read=read), f"{request} changed the database"


@pytest.mark.parametrize(("route", "view", "method"), ROUTES, ids=ROUTE_IDS)
def test_injection_strings_in_path_query_and_body(admin_client, route, view, method):
    known = "absent" if method == "delete" else "i1"  # deletes must not take the rows checked below
    for text in INJECTIONS:
        for path, query, body in (
            (path_for(route, text), None, None),
            (path_for(route, known), query_for(route, method, text), None),
            (path_for(route, known), None, body_for(route, method, text, 1)),
        ):
            if method == "get" and body is not None:
                continue
            before = table_counts()
            if method in ("post", "put", "patch") and body is None:
                body = body_for(route, method, "x", 1)
            response = send(admin_client, method, path, query=query, body=body)
            assert_answered_safely(response, method, before)

    # the injections did nothing: the tables and the known rows are all there
    assert admin_client.get("/api/v1/items/i1").status_code == 200
    assert admin_client.get("/api/v1/users/u1").status_code == 200


@pytest.mark.parametrize(("route", "view", "method"), ROUTES, ids=ROUTE_IDS)
def test_oversized_input(admin_client, settings, route, view, method):
    settings.API_MAX_BODY_BYTES = 64 * 1024
    cases = [
        (path_for(route, "x" * 10_000), None, None, None),
        (path_for(route, "i1"), query_for(route, method, HUGE_STRING[:20_000]), None, None),
        (path_for(route, "i1"), query_for(route, method, str(HUGE_INT)), None, None),
    ]
    if method != "get":
        cases += [
            (path_for(route, "i1"), None, body_for(route, method, "x" * 30_000, HUGE_INT), None),
            (path_for(route, "i1"), None, body_for(route, method, "x", -HUGE_INT), None),
            (path_for(route, "i1"), None, None, '{"a": "' + HUGE_STRING + '"}'),
            (path_for(route, "i1"), None, None, "[" * 5_000 + "]" * 5_000),
        ]
    for path, query, body, raw in cases:
        before = table_counts()
        response = send(admin_client, method, path, query=query, body=body, raw=raw)
        assert_answered_safely(response, method, before)
        if (route, method) in JSON_BODIES and raw and len(raw) > settings.API_MAX_BODY_BYTES:
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "payload_too_large"


def test_the_routes_cover_every_api_view():
    views = {view.__name__ for _, view, _ in ROUTES}
    assert {"EventCreateApi", "ItemDetailApi", "RankApi", "DeployApi", "WhoAmIApi"} <= views
    assert len(ROUTES) >= 25


def test_nul_characters_are_refused_in_the_error_shape_before_any_query(admin_client):
    # Before the guard these reached PostgreSQL ("text fields cannot contain NUL") as a 500.
    for response in (
        admin_client.get("/api/v1/items/a%00b"),
        admin_client.get("/api/v1/models", {"cursor": "a\x00b"}),
        admin_client.put("/api/v1/users/u1", {"attributes": {"k": "a\x00b"}}, format="json"),
    ):
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] in ("invalid", "parse_error")

    # an escaped backslash followed by u0000 is ordinary text, not a NUL
    response = admin_client.put(
        "/api/v1/users/u2",
        data='{"attributes": {"k": "a\\\\u0000"}}',
        content_type="application/json",
    )
    assert response.status_code in (200, 201), response.content
