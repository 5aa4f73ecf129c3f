"""A real local model server (in this process, on a free port) serving a contract model whose
vocabulary is the test catalog: item-0 ... item-39."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from core.catalog.models import Item
from core.features.services import features_refresh
from core.recommendations import model_gateway
from tests.model_servers import contract_model_repository, local_model_server

NUM_ITEMS = 40
_event_numbers = itertools.count()


def category_of(index: int) -> str:
    return "books/scifi" if index < 20 else "toys"


@pytest.fixture(scope="session")
def model_server_target(tmp_path_factory):
    base = contract_model_repository(tmp_path_factory.mktemp("models"), num_items=NUM_ITEMS)
    with local_model_server(base_path=base) as target:
        yield target


@pytest.fixture
def serving(settings, model_server_target):
    """Settings pointing at the live model server, with generous deadlines for a loaded CI."""
    settings.MODEL_SERVER_TARGET = model_server_target
    settings.MODEL_SERVER_TIMEOUT_MS = 5000
    settings.RECOMMENDATIONS_BUDGET_MS = 5000
    settings.RECOMMENDATIONS_MAX_PER_CATEGORY = 0
    model_gateway.reset_client()
    yield settings
    model_gateway.reset_client()


@pytest.fixture
def catalog(db):
    now = datetime.now(UTC)
    Item.objects.bulk_create(
        Item(
            external_id=f"item-{i}",
            title=f"Item {i}",
            category=category_of(i),
            created_at=now,
            updated_at=now,
        )
        for i in range(NUM_ITEMS)
    )


@pytest.fixture
def post_events(make_client):
    client = make_client("events:write")

    def post(*events: dict) -> None:
        body = [{"event_id": f"e-{next(_event_numbers)}", **e} for e in events]
        response = client.post("/api/v1/events", body, format="json")
        assert response.status_code == 202, response.json()
        features_refresh(trigger="test")

    return post
