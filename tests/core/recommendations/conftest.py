"""A real local model server (in this process, on a free port) serving a contract model whose
vocabulary is the test catalog: item-0 ... item-39."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from core.catalog.models import Item
from core.features.services import features_refresh
from core.recommendations import model_gateway

NUM_ITEMS = 40
_event_numbers = itertools.count()


def category_of(index: int) -> str:
    return "books/scifi" if index < 20 else "toys"


@pytest.fixture(scope="session")
def model_server_target(tmp_path_factory):
    from ml.serving.contract_model import export_contract_model
    from ml.serving.server.app import ModelServer, ServerOptions

    base = tmp_path_factory.mktemp("models") / "recommender"
    base.mkdir()
    export_contract_model(str(base / "1"), num_items=NUM_ITEMS, dim=8, seed=3)
    server = ModelServer(
        ServerOptions(
            port=0,
            rest_api_port=None,
            host="127.0.0.1",
            model_name="recommender",
            model_base_path=str(base),
            file_system_poll_wait_seconds=0,
        )
    ).start()
    yield f"127.0.0.1:{server.grpc_port}"
    server.stop(grace=0)


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
