"""A worker that loses its Redis broker waits for it instead of exiting (found by `make chaos`,
fault "broker"; the real outage is in tests/core/system/test_resilience.py). kombu 5.7 met the
closed transport with an AttributeError that Celery's reconnect path does not expect."""

from types import SimpleNamespace

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

import recommender.celery  # noqa: F401  (installs the guard)


def test_a_channel_on_a_closed_transport_raises_a_connection_error():
    # given: a channel whose transport was closed when the broker went away
    channel = object.__new__(kombu_redis.Channel)
    channel.connection = SimpleNamespace(client=None)

    # then: an error Celery treats as "broker lost, reconnect", not an unrecoverable one
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
    assert any(
        issubclass(redis.exceptions.ConnectionError, kind)
        for kind in kombu_redis.Transport.connection_errors
    )


def test_a_channel_on_an_open_transport_is_unchanged():
    channel = object.__new__(kombu_redis.Channel)
    channel.connection = SimpleNamespace(
        client=kombu.Connection("redis://127.0.0.1:6399/0"), default_port=6379
    )

    params = channel._connparams()

    assert (params["host"], params["port"]) == ("127.0.0.1", 6399)
