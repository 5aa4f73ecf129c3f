"""A web process serving the whole API never loads TensorFlow, and stays small.

A fresh interpreter does what a gunicorn worker does: sets up Django, imports the URLconf and
every app's API module, and answers requests through the WSGI application (recommendations from
a live model server, uncached and cached; similar, popular, rank; events; catalog; health). It
then reports its resident memory and the TensorFlow modules it holds, which must be none: the
serving client reads and writes TF Serving's messages without TensorFlow's runtime (issue 7's
budget: 200 MB per worker). Full-load figures come from `make bench-serve`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings

from core.catalog.models import Item
from core.system.services import api_key_create
from tests.model_servers import contract_model_repository, local_model_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
NUM_ITEMS = 40
REQUESTS = 800
RSS_BUDGET_MB = 200

WEB_PROCESS = textwrap.dedent(
    """
    import importlib, json, sys, time
    from io import BytesIO
    from wsgiref.util import setup_testing_defaults

    started = time.perf_counter()
    from recommender.wsgi import application  # django.setup(), as gunicorn does
    import recommender.urls  # noqa: F401
    from django.apps import apps

    imported = []
    for config in apps.get_app_configs():
        if config.name.startswith("core."):
            try:
                importlib.import_module(config.name + ".api")
            except ModuleNotFoundError as exc:
                if exc.name != config.name + ".api":
                    raise
            else:
                imported.append(config.name + ".api")
    startup_seconds = time.perf_counter() - started
    key = sys.argv[1]
    count = int(sys.argv[2])

    def call(method, path, body=None):
        path, _, query = path.partition("?")
        data = json.dumps(body).encode() if body is not None else b""
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "HTTP_HOST": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
            "HTTP_AUTHORIZATION": f"Bearer {key}", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)), "wsgi.input": BytesIO(data),
        }
        setup_testing_defaults(environ)
        status = []
        result = application(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            payload = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        return int(status[0].split()[0]), payload

    def rss_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    def item(n):
        return f"item-{n % 40}"

    requests = [  # (name, method, path, body)
        lambda i: ("recommendations", "GET", f"/api/v1/users/u{i}/recommendations?count=5"
                                             f"&session_items={item(i)},{item(i * 7 + 3)}"),
        lambda i: ("recommendations", "GET",
                   "/api/v1/users/u1/recommendations?count=5&session_items=item-1"),
        lambda i: ("similar", "GET", f"/api/v1/items/{item(i)}/similar?count=5"),
        lambda i: ("popular", "GET", "/api/v1/popular?count=5"),
        lambda i: ("rank", "POST", "/api/v1/rank",
                   {"user_id": f"u{i}", "item_ids": [item(i + j) for j in range(8)],
                    "session_items": [item(i * 3)]}),
        lambda i: ("events", "POST", "/api/v1/events",
                   [{"event_id": f"web-{i}", "user_id": f"u{i % 50}", "item_id": item(i),
                     "type": "view"}]),
        lambda i: ("catalog", "GET", "/api/v1/items?limit=20"),
        lambda i: ("healthz", "GET", "/healthz"),
    ]
    sources, failures, seconds, calls = {}, [], {}, {}
    rss_after_warmup = None
    served_started = time.perf_counter()
    for index in range(count):
        kind, method, path, *body = requests[index % len(requests)](index)
        call_started = time.perf_counter()
        status, payload = call(method, path, *body)
        seconds[kind] = seconds.get(kind, 0.0) + time.perf_counter() - call_started
        calls[kind] = calls.get(kind, 0) + 1
        if status >= 300:
            failures.append(f"{method} {path} -> {status} {payload[:300]!r}")
        elif kind == "recommendations":
            source = json.loads(payload)["source"]
            sources[source] = sources.get(source, 0) + 1
        if index == len(requests) * 5:
            rss_after_warmup = rss_mb()
    print(json.dumps({
        "imported": imported,
        "startup_seconds": startup_seconds,
        "requests": count,
        "requests_seconds": time.perf_counter() - served_started,
        "failures": failures[:5],
        "sources": sources,
        "mean_ms_per_kind_on_a_shared_machine": {
            kind: round(total * 1000 / calls[kind], 2) for kind, total in seconds.items()
        },
        "rss_after_warmup_mb": rss_after_warmup,
        "rss_mb": rss_mb(),
        "tensorflow_modules": sorted(
            m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")
        ),
        "keras_or_tf_runtime": sorted(
            m for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras", "tensorflow_core")
        ),
    }))
    """
)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    base = contract_model_repository(
        tmp_path_factory.mktemp("web-process-models"), num_items=NUM_ITEMS
    )
    with local_model_server(base_path=base) as target:
        yield target


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )


def test_a_web_process_serves_the_api_without_tensorflow(model_server, tmp_path):
    # given a catalog and a key, committed where a separate process sees them
    now = datetime.now(UTC)
    Item.objects.bulk_create(
        Item(external_id=f"item-{i}", title=f"Item {i}", category="books" if i < 20 else "toys",
             created_at=now, updated_at=now)
        for i in range(NUM_ITEMS)
    )  # fmt: skip
    key = api_key_create(
        name="web process",
        scopes=["events:write", "recommendations:read", "catalog:write"],
    ).raw_key
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recommender.settings",
        "DATABASE_URL": _database_url(),
        "MODEL_SERVER_TARGET": model_server,
        "MODEL_SERVER_TIMEOUT_MS": "5000",
        "RECOMMENDATIONS_BUDGET_MS": "5000",
        "RECOMMENDER_VAR_DIR": str(tmp_path),
    }

    # when a fresh process serves the API through the WSGI application
    result = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS, key, str(REQUESTS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    # then it answered everything, the model included, and holds no TensorFlow
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("web process:", json.dumps(report, indent=1))
    assert report["failures"] == []
    assert {"core.recommendations.api", "core.events.api", "core.catalog.api"} <= set(
        report["imported"]
    )
    assert report["sources"].get("model", 0) > 0, report["sources"]
    assert report["sources"].get("cache", 0) > 0, report["sources"]
    assert report["tensorflow_modules"] == []
    assert report["keras_or_tf_runtime"] == []
    assert report["rss_mb"] <= RSS_BUDGET_MB, report
