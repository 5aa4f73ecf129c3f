"""Per-key rate limits by scope: `API_RATE_LIMITS`, answered with 429 and `Retry-After`.

A fixed window per (key, scope, period), counted on Redis. Each web process takes its tokens in
blocks (1% of the limit, at least 1: one pipelined INCRBY + EXPIRE), so a busy key costs one
round trip per block rather than per request. A process may hold one block it does not use up, so
with P processes a client can be refused up to P x block requests early within a window; it is
never let through over its limit. A window lets a client send up to twice its rate across a
window boundary; fine for a limit meant to stop runaway clients.

With REDIS_URL unset (the embedded default) the counters live in each process, so the limit holds
per web process rather than across them.

Rate limiting must never take the API down: if Redis fails, requests pass (fail open), a warning
is logged once per outage, and Redis is not asked again for a few seconds.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from recommender.settings.security import parse_rate

from .models import ApiKey

if TYPE_CHECKING:
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

_KEY_PREFIX = "rec:throttle"
# After a Redis error, requests pass unthrottled for this long before Redis is tried again.
_REDIS_RETRY_SECONDS = 5.0


@functools.lru_cache(maxsize=64)
def _rate(rate: str) -> tuple[int, int] | None:
    return parse_rate(rate)


def limit_for(scope: str) -> tuple[int, int] | None:
    """(requests, period in seconds) for a view scope, or None when unlimited."""
    limits: dict[str, str] = settings.API_RATE_LIMITS
    rate = limits.get(scope, limits.get("*"))
    return _rate(rate) if rate else None


class _RedisCounter:
    def __init__(self) -> None:
        self._client: redis.Redis | None = None
        self._url: str | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}  # window key -> tokens this process may still use

    def _get_client(self, url: str) -> redis.Redis:
        if self._client is None or self._url != url:
            with self._lock:
                self._client = redis.Redis.from_url(
                    url, socket_connect_timeout=0.2, socket_timeout=0.2
                )
                self._url = url
        return self._client

    def take(self, url: str, key: str, ttl: int, limit: int) -> bool | None:
        """Whether this request is within `limit` in this window (key), from this process's
        leased tokens or a new block from Redis; None when Redis cannot tell."""
        with self._lock:
            left = self._leases.get(key, 0)
            if left > 0:
                self._leases[key] = left - 1
                return True
        block = max(1, limit // 100)
        count = self._incr(url, key, ttl, block)
        if count is None:
            return None
        granted = max(0, min(block, limit - (count - block)))
        with self._lock:
            if len(self._leases) > 10_000:  # windows gone by: dead weight
                self._leases.clear()
            self._leases[key] = self._leases.get(key, 0) + max(0, granted - 1)
        return granted > 0

    def _incr(self, url: str, key: str, ttl: int, by: int) -> int | None:
        """The count in this window after adding `by`, or None when Redis cannot tell."""
        now = time.monotonic()
        if now < self._down_until:
            return None
        try:
            pipe = self._get_client(url).pipeline(transaction=False)
            pipe.incrby(key, by)
            pipe.expire(key, ttl)
            count, _ = pipe.execute()
        except redis.RedisError as exc:
            if self._down_until == 0.0:
                logger.warning("Rate limiting is off while Redis fails (failing open): %s", exc)
            self._down_until = now + _REDIS_RETRY_SECONDS
            return None
        if self._down_until:
            logger.info("Rate limiting is back on: Redis answers again.")
            self._down_until = 0.0
        return int(count)

    def reset(self) -> None:
        self._down_until = 0.0
        self._client = None
        with self._lock:
            self._leases.clear()


class _LocalCounter:
    """Per-process windows, for the embedded default without Redis."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._window: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, window: int) -> int:
        with self._lock:
            if len(self._counts) > 50_000:  # bound memory: old windows are dead weight
                stale = [k for k, w in self._window.items() if w < window]
                for k in stale:
                    del self._counts[k], self._window[k]
            count = self._counts.get(key, 0) + 1
            self._counts[key] = count
            self._window[key] = window
            return count

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._window.clear()


_redis_counter = _RedisCounter()
_local_counter = _LocalCounter()


class ScopeRateThrottle(BaseThrottle):
    """Keyed by API key id and the view's `required_scope`; limits from API_RATE_LIMITS.

    Anonymous requests are not counted here: they are refused by the permission before
    throttles run, or reach a view (the schema) that needs no key.
    """

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        api_key = request.user
        if not isinstance(api_key, ApiKey):
            return True
        scope = getattr(view, "required_scope", None) or "*"
        limit = limit_for(scope)
        if limit is None:
            return True
        requests, period = limit
        now = time.time()
        window = int(now // period)
        key = f"{_KEY_PREFIX}:{api_key.pk}:{scope}:{period}:{window}"
        redis_url = getattr(settings, "REDIS_URL", None)
        if redis_url:
            allowed = _redis_counter.take(redis_url, key, period + 1, requests)
            if allowed is None or allowed:
                return True
        elif _local_counter.hit(key, window) <= requests:
            return True
        # Whole seconds, at least one: Retry-After takes an integer.
        self._wait = max(1, math.ceil((window + 1) * period - now))
        return False

    def wait(self) -> float | None:
        return self._wait


def throttle_state_reset() -> None:
    """Forget a Redis outage and the per-process counters (tests, and after a config change)."""
    _redis_counter.reset()
    _local_counter.clear()
