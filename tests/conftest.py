"""Shared fixtures. The suite runs against PostgreSQL and Redis at DATABASE_URL / REDIS_URL
(`make test` sets and checks them); tests that need neither still run anywhere."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from core.system.services import api_key_create


@pytest.fixture
def make_client(db) -> Callable[..., APIClient]:
    """make_client("events:write", ...) -> an APIClient authenticated with a fresh key."""

    def _make(*scopes: str) -> APIClient:
        client = APIClient()
        if scopes:
            created = api_key_create(name="test", scopes=list(scopes))
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")
        return client

    return _make


@pytest.fixture(autouse=True)
def _clear_cache(settings):
    from django.core.cache import cache

    from core.recommendations.sources import categories_cache_clear

    with contextlib.suppress(Exception):  # a test that stopped the cache cleans up itself
        cache.clear()
    categories_cache_clear()  # the serving path's per-process catalog categories
    yield


@pytest.fixture(autouse=True)
def _items_thread_stopped():
    """The feature refresh's items thread keeps its database connection between runs: closed
    after each test, so that no test sees another's and the test database can be dropped."""
    yield
    from core.features.services import items_thread_stop

    items_thread_stop()
