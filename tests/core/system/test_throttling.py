import logging
from unittest import mock

import pytest
import redis
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from core.system.throttling import throttle_state_reset
from recommender.settings.security import parse_rate, rate_limits_setting

pytestmark = pytest.mark.django_db

# Per day, so no test crosses a window boundary between its requests.
LOW = {"*": "2/d", "events:write": "3/d", "recommendations:read": "off"}


@pytest.fixture(autouse=True)
def _fresh_state():
    throttle_state_reset()
    yield
    throttle_state_reset()


def test_a_key_over_its_scope_limit_gets_429_with_retry_after_in_the_error_shape(
    settings, make_client
):
    # given
    settings.API_RATE_LIMITS = LOW
    client = make_client("events:write")

    # when
    statuses = [client.get("/api/v1/me").status_code for _ in range(3)]
    response = client.get("/api/v1/me")

    # then
    assert statuses == [200, 200, 429]
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 86400
    body = response.json()
    assert body["error"]["code"] == "throttled"
    assert body["error"]["request_id"] == response["X-Request-ID"]


def test_limits_are_per_key_and_per_scope(settings, make_client):
    settings.API_RATE_LIMITS = LOW
    first, second = make_client("admin"), make_client("admin")
    for _ in range(2):
        assert first.get("/api/v1/me").status_code == 200
    assert first.get("/api/v1/me").status_code == 429

    # another key has its own count
    assert second.get("/api/v1/me").status_code == 200
    # another scope of the same key has its own count (events:write allows 3: 400 is not 429)
    for _ in range(3):
        assert first.post("/api/v1/events", {}, format="json").status_code != 429
    assert first.post("/api/v1/events", {}, format="json").status_code == 429
    # `off` means no limit
    for _ in range(5):
        assert first.get("/api/v1/popular").status_code != 429


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs REDIS_URL")
def test_counts_are_kept_in_redis_so_every_process_shares_them(settings, make_client):
    settings.API_RATE_LIMITS = LOW
    client = make_client("events:write")
    client.get("/api/v1/me")
    keys = redis.Redis.from_url(settings.REDIS_URL).keys("rec:throttle:*")
    assert keys, "no counter in Redis"


def test_without_redis_a_per_process_limiter_still_limits(settings, make_client):
    settings.REDIS_URL = None
    settings.API_RATE_LIMITS = LOW
    client = make_client("events:write")
    statuses = [client.get("/api/v1/me").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_when_redis_is_down_requests_pass_and_one_warning_is_logged(settings, make_client, caplog):
    # given: nothing listens on port 1
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.API_RATE_LIMITS = LOW
    client = make_client("events:write")

    # when
    with caplog.at_level(logging.WARNING, logger="core.system.throttling"):
        statuses = [client.get("/api/v1/me").status_code for _ in range(4)]

    # then
    assert statuses == [200] * 4
    warnings = [r for r in caplog.records if r.name == "core.system.throttling"]
    assert len(warnings) == 1
    assert "failing open" in warnings[0].getMessage()


def test_default_limits_are_generous_and_anonymous_schema_is_not_throttled(client):
    assert parse_rate(django_settings.API_RATE_LIMITS["events:write"])[0] >= 100
    for _ in range(3):
        assert client.get("/api/v1/schema/").status_code == 200


def test_rate_limits_setting_merges_with_defaults_and_names_its_variable_when_bad():
    limits = rate_limits_setting("events:write=100/s, models:write=2/m, admin=off")
    assert limits["events:write"] == "100/s"
    assert limits["models:write"] == "2/m"
    assert limits["admin"] == "off"
    assert limits["recommendations:read"]  # default kept

    for bad in ("events:write=fast", "events:write", "events:write=0/s", "=5/s"):
        with pytest.raises(ImproperlyConfigured, match=r"^API_RATE_LIMITS: "):
            rate_limits_setting(bad)


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs REDIS_URL")
def test_a_throttled_request_costs_one_redis_round_trip(settings, make_client, monkeypatch):
    # given: a spy on every Redis round trip (single commands and pipelines)
    settings.API_RATE_LIMITS = LOW
    client = make_client("events:write")
    trips: list[str] = []
    real_execute = redis.client.Pipeline.execute
    real_command = redis.Redis.execute_command

    def pipeline_execute(self, *args, **kwargs):
        trips.append(" ".join(str(part) for cmd in self.command_stack for part in cmd[0][:2]))
        return real_execute(self, *args, **kwargs)

    def single_command(self, *args, **kwargs):
        trips.append(" ".join(str(part) for part in args[:2]))
        return real_command(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline_execute)
    monkeypatch.setattr(redis.Redis, "execute_command", single_command)

    # when
    client.get("/api/v1/me")

    # then
    throttle_trips = [trip for trip in trips if "rec:throttle" in trip]
    assert len(throttle_trips) == 1, trips
    assert throttle_trips[0].startswith("INCRBY rec:throttle:")
    assert " EXPIRE rec:throttle:" in throttle_trips[0]


@pytest.mark.skipif(not django_settings.REDIS_URL, reason="needs REDIS_URL")
def test_tokens_are_leased_in_blocks_and_the_limit_holds_across_processes(settings):
    from core.system.throttling import _RedisCounter

    # given: two web processes (two counters) sharing one key's window, limit 300 (blocks of 3)
    first, second = _RedisCounter(), _RedisCounter()
    key = "rec:throttle:test-lease:1"
    redis.Redis.from_url(settings.REDIS_URL).delete(key)
    trips: list[int] = []
    real_incr = _RedisCounter._incr

    def counting_incr(self, *args, **kwargs):
        trips.append(1)
        return real_incr(self, *args, **kwargs)

    # when: they take turns until both are refused
    with mock.patch.object(_RedisCounter, "_incr", counting_incr):
        granted = 0
        for _ in range(400):
            for counter in (first, second):
                granted += bool(counter.take(settings.REDIS_URL, key, 5, 300))

    # then: exactly the limit, one round trip per block while under it
    assert granted == 300
    assert len(trips) - (800 - 300) == 100
