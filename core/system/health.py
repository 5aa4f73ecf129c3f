"""Liveness (/healthz: the process answers) and readiness (/readyz: its dependencies answer)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from .selectors import heartbeat_age_seconds

CHECK_TIMEOUT_SECONDS = 1.0


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return connection.vendor


def _broker() -> str:
    from recommender.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=CHECK_TIMEOUT_SECONDS)
        return conn.as_uri()


def _cache() -> str:
    cache.set("readyz:probe", "1", timeout=10)
    if cache.get("readyz:probe") != "1":
        raise RuntimeError("cache did not return what was written")
    return cache.__class__.__name__


def _model_server() -> str:
    """The model server answers and serves at least one AVAILABLE version of MODEL_NAME."""
    from core.recommendations.model_gateway import client
    from ml.serving.client import ModelNotFound

    target, name = settings.MODEL_SERVER_TARGET, settings.MODEL_NAME
    try:
        statuses = client().model_status(name, timeout=CHECK_TIMEOUT_SECONDS)
    except ModelNotFound as exc:
        raise RuntimeError(f"{target} answers but serves no version of {name!r}") from exc
    available = sorted(status.version for status in statuses if status.available)
    if not available:
        states = ", ".join(f"v{status.version} {status.state}" for status in statuses)
        raise RuntimeError(f"{target} has no AVAILABLE version of {name!r} ({states})")
    return f"{target} serves {name} version {available[-1]}"


# The database check runs in the request's thread (its connection is the request's own);
# the others run side by side so a slow one does not add up.
THREADED_CHECKS: dict[str, Callable[[], str]] = {
    "broker": _broker,
    "cache": _cache,
    "model_server": _model_server,
}


def _run(check: Callable[[], str]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # a readiness probe reports every failure, whatever its type
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return {"ok": ok, "detail": detail, "ms": round((time.perf_counter() - started) * 1000, 1)}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    with ThreadPoolExecutor(max_workers=len(THREADED_CHECKS)) as pool:
        futures = {name: pool.submit(_run, check) for name, check in THREADED_CHECKS.items()}
        results = {"database": _run(_database)}
        results.update({name: future.result() for name, future in futures.items()})
    failed = sorted(name for name, result in results.items() if not result["ok"])
    body = {
        "status": "ready" if not failed else "unavailable",
        "failed": failed,
        "checks": results,
        # Informational: a worker and beat that stopped show here before jobs fall behind.
        "worker_heartbeat_age_seconds": heartbeat_age_seconds(),
    }
    return JsonResponse(body, status=200 if not failed else 503)
