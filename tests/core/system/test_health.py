from concurrent import futures

import grpc
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def grpc_target():
    """A real gRPC server on a free port (readiness checks reachability, not models)."""
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


def test_readyz_names_the_model_server_when_it_is_down(client, settings):
    settings.MODEL_SERVER_TARGET = f"127.0.0.1:{free_port()}"

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
