"""The ingest path's raw psycopg cursor survives a PostgreSQL restart as Django's cursors do
(found by `make chaos`: after the restart, large event batches were 503 while small ones went
through Django's cursor and were accepted)."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, close_old_connections, connection

from core.catalog.postgres import pg_cursor

pytestmark = pytest.mark.django_db(transaction=True)


def _drop_this_connection_on_the_server() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    params = connection.get_connection_params()
    conninfo = psycopg.conninfo.make_conninfo(
        **{k: v for k, v in params.items() if k in ("host", "port", "user", "dbname", "password")}
    )
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture
def health_checks(settings):
    settings.DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    connection.settings_dict["CONN_MAX_AGE"] = 60
    yield
    connection.close()


def test_a_connection_the_server_dropped_is_replaced_at_the_next_request(health_checks):
    _drop_this_connection_on_the_server()
    close_old_connections()  # a new request begins

    with pg_cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_an_error_marks_the_connection_so_the_request_end_closes_it(health_checks):
    with pg_cursor() as cursor:  # checked once per request: not again below
        cursor.execute("SELECT 1")
    _drop_this_connection_on_the_server()

    with pytest.raises(OperationalError), pg_cursor() as cursor:
        cursor.execute("SELECT 1")
    assert connection.errors_occurred
    close_old_connections()  # the request ends: the broken connection is closed

    assert connection.connection is None
