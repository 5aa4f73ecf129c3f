"""Prometheus metrics of the web and worker processes, served at /metrics.

Counters and histograms live in each process; with several web workers set
PROMETHEUS_MULTIPROC_DIR (an empty folder per start, as `make demo` does) so /metrics adds up every
worker. Gauges that describe shared state (feature lag, queue depth) are computed when scraped.

Access: an API key with the `admin` scope, or a client address in METRICS_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from .errors import error_body
from .scopes import ADMIN
from .services import api_key_authenticate

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

HTTP_REQUESTS = Counter(
    "recommender_http_requests_total",
    "HTTP requests by route, method and status class.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "recommender_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
RECOMMENDATIONS_SERVED = Counter(
    "recommender_recommendations_served_total",
    "Recommendation pages served, by surface and by what served them (model, cache, fallback).",
    ["surface", "source"],
)
MODEL_SERVER_CALLS = Counter(
    "recommender_model_server_calls_total",
    "Calls to TF Serving by method and outcome (OK, a gRPC code, or CIRCUIT_OPEN).",
    ["method", "outcome"],
)
MODEL_SERVER_LATENCY = Histogram(
    "recommender_model_server_call_duration_seconds",
    "Time of one call to TF Serving, by method.",
    ["method"],
    buckets=_LATENCY_BUCKETS,
)
IMPRESSIONS_DROPPED = Counter(
    "recommender_impressions_dropped_total",
    "Impressions dropped because the writer's buffer was full (the database was down).",
)
CELERY_TASK_FAILURES = Counter(
    "recommender_celery_task_failures_total",
    "Celery tasks that raised, by task name (counted in the worker: with PROMETHEUS_MULTIPROC_DIR "
    "shared with the web processes, /metrics adds them up).",
    ["task"],
)
EVENTS_INGESTED = Counter(
    "recommender_events_ingested_total",
    "Events received by the API, by outcome (accepted, duplicate, rejected).",
    ["outcome"],
)


def observe_model_server_call(method: str, outcome: str, seconds: float) -> None:
    """The serving client's observer hook."""
    MODEL_SERVER_CALLS.labels(method, outcome).inc()
    MODEL_SERVER_LATENCY.labels(method).observe(seconds)


def observe_recommendations(surface: str, source: str) -> None:
    # `fallback:popular_category` and friends: a handful of values, safe as a label.
    RECOMMENDATIONS_SERVED.labels(surface, source).inc()


def observe_task_failure(task: str) -> None:
    # Task names are declared in code (`name=` on every task): a bounded label.
    CELERY_TASK_FAILURES.labels(task).inc()


def observe_ingest(*, accepted: int, duplicates: int, rejected: int) -> None:
    for outcome, count in (
        ("accepted", accepted),
        ("duplicate", duplicates),
        ("rejected", rejected),
    ):
        if count:
            EVENTS_INGESTED.labels(outcome).inc(count)


class MetricsMiddleware:
    """Counts and times every request by its URL pattern (never the raw path: bounded labels)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        if route == "metrics":
            return response
        method = request.method if request.method in _METHODS else "OTHER"
        HTTP_REQUESTS.labels(route, method, f"{response.status_code // 100}xx").inc()
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
        return response


_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


class SharedStateCollector(Collector):
    """Gauges read at scrape time from the database and the broker: they describe the whole
    deployment, so every process reports the same value."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "recommender_feature_lag_events",
            "Stored events not yet folded into features, per consumer.",
            labels=["consumer"],
        )
        try:
            from core.features.services import features_status

            for row in features_status():
                backlog = row.get("highest_event_id", 0) - row.get("watermark", 0)
                lag.add_metric([str(row.get("consumer"))], max(0, backlog))
        except Exception:  # the database is down: /readyz says so; the scrape still answers
            logger.warning("metrics: feature lag unavailable", exc_info=True)
        yield lag

        depth = GaugeMetricFamily(
            "recommender_celery_queue_depth", "Tasks waiting in the Celery queue.", labels=["queue"]
        )
        queue_length = _celery_queue_length("celery")
        if queue_length is not None:
            depth.add_metric(["celery"], queue_length)
        yield depth


def _celery_queue_length(queue: str) -> int | None:
    broker = settings.CELERY_BROKER_URL
    try:
        if broker.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(broker, socket_timeout=0.2, socket_connect_timeout=0.2)
            return int(client.llen(queue))
        if broker.startswith("filesystem://"):
            folder = str(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            return len([name for name in os.listdir(folder) if name.endswith(f".{queue}.msg")])
    except Exception:
        logger.warning("metrics: queue depth unavailable", exc_info=True)
    return None


_shared_collector_registered = False


def _registry() -> CollectorRegistry:
    global _shared_collector_registered
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(SharedStateCollector())
        return registry
    if not _shared_collector_registered:
        REGISTRY.register(SharedStateCollector())
        _shared_collector_registered = True
    return REGISTRY


def _allowed(request: HttpRequest) -> bool:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw_key = header.partition(" ")
    if scheme.lower() == "bearer" and raw_key.strip():
        api_key = api_key_authenticate(raw_key=raw_key.strip())
        return api_key is not None and api_key.has_scope(ADMIN)
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return JsonResponse(
            error_body(
                "forbidden",
                "Metrics need an API key with the 'admin' scope or an allowed network.",
            ),
            status=403,
        )
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
