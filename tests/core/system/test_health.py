from concurrent import futures

import grpc
import pytest

from core.recommendations import model_gateway
from tests.model_servers import contract_model_repository, local_model_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def serving_target(tmp_path_factory):
    """The real local model server, serving a contract model as MODEL_NAME."""
    base = contract_model_repository(tmp_path_factory.mktemp("health-models"), num_items=10)
    with local_model_server(base_path=base) as target:
        yield target


@pytest.fixture
def grpc_target(settings, serving_target):
    settings.MODEL_NAME = "recommender"
    model_gateway.reset_client()
    yield serving_target
    model_gateway.reset_client()


@pytest.fixture
def bare_grpc_target():
    """A gRPC server with no services: something answers, but it serves no model."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthz_answers(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_everything_answers(client, settings, grpc_target):
    settings.MODEL_SERVER_TARGET = grpc_target

    response = client.get("/readyz")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker", "cache", "model_server"}


def test_readyz_says_which_version_serves(client, settings, grpc_target):
    settings.MODEL_SERVER_TARGET = grpc_target

    body = client.get("/readyz").json()

    assert body["checks"]["model_server"]["detail"].endswith("serves recommender version 1")


def test_readyz_fails_when_the_server_answers_without_the_model(client, settings, grpc_target):
    settings.MODEL_SERVER_TARGET = grpc_target
    settings.MODEL_NAME = "no-such-model"
    from core.recommendations import model_gateway as gateway

    gateway.reset_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["model_server"]
    assert (
        "serves no version of 'no-such-model'"
        in response.json()["checks"]["model_server"]["detail"]
    )


def test_readyz_fails_when_something_else_answers_on_the_port(client, settings, bare_grpc_target):
    settings.MODEL_SERVER_TARGET = bare_grpc_target
    from core.recommendations import model_gateway as gateway

    gateway.reset_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["model_server"]


def test_readyz_names_the_model_server_when_it_is_down(client, settings):
    settings.MODEL_SERVER_TARGET = f"127.0.0.1:{free_port()}"
    from core.recommendations import model_gateway as gateway

    gateway.reset_client()

    response = client.get("/readyz")

    body = response.json()
    assert response.status_code == 503
    assert body["failed"] == ["model_server"]
    assert settings.MODEL_SERVER_TARGET in body["checks"]["model_server"]["detail"]


def test_readyz_names_the_broker_when_it_is_down(client, settings, grpc_target):
    from recommender.celery import app

    settings.MODEL_SERVER_TARGET = grpc_target
    original = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = original

    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]
