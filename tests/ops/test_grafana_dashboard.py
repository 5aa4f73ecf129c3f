"""ops/grafana/recommender.json queries only metrics the code exports: the web and worker
processes (core/system/metrics.py, read at /metrics) and the model server
(ml/serving/server/metrics.py, at /monitoring/prometheus/metrics)."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from core.system import metrics as web_metrics
from ml.serving.server.metrics import ServerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "recommender.json"
# What the Prometheus text format makes of one family, by type.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
METRIC = re.compile(r"\b(?:recommender|model_server)_[a-zA-Z0-9_:]*")


def exported_names(collectors) -> set[str]:
    names = set()
    for collector in collectors:
        describe = getattr(collector, "describe", None)
        families = describe() if describe is not None else collector.collect()
        for family in families:
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


@pytest.fixture
def exported(db) -> set[str]:
    server = ServerMetrics()
    collectors = [
        *(value for value in vars(web_metrics).values() if isinstance(value, MetricWrapperBase)),
        web_metrics.SharedStateCollector(),  # gauges computed when scraped (reads the database)
        *(value for value in vars(server).values() if isinstance(value, MetricWrapperBase)),
    ]
    return exported_names(collectors)


def queries(node) -> list[str]:
    """Every PromQL string in the dashboard: panel targets and template variable queries."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            is_promql = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if is_promql and isinstance(value, str):
                found.append(value)
            else:
                found += queries(value)
    elif isinstance(node, list):
        for value in node:
            found += queries(value)
    return found


def test_every_metric_the_dashboard_queries_is_exported(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = queries(dashboard)
    assert len(expressions) >= 20

    queried = {name for expression in expressions for name in METRIC.findall(expression)}

    assert queried - exported == set(), f"queried but never exported: {queried - exported}"


def test_every_query_names_a_metric_of_ours():
    dashboard = json.loads(DASHBOARD.read_text())
    for expression in queries(dashboard):
        assert METRIC.search(expression), expression


def test_the_dashboard_covers_what_the_issue_asks_for():
    text = DASHBOARD.read_text()
    for name in (
        "recommender_http_requests_total",  # request rate and errors per endpoint
        "recommender_http_request_duration_seconds_bucket",  # latency per endpoint
        "recommender_recommendations_served_total",  # fallback rate by tier
        "model_server_request_latency_seconds_bucket",  # per model version
        "model_server_request_errors_total",
        "recommender_feature_lag_events",
        "recommender_celery_queue_depth",
        "recommender_celery_task_failures_total",
        "recommender_events_ingested_total",  # ingestion rate
    ):
        assert name in text, name


def test_the_test_catches_a_name_nobody_exports(exported):
    assert "recommender_http_requests" not in exported  # the family name, not a sample
    assert "model_server_requests_total" in exported
