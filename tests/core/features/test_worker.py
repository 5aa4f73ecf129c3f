"""Reliability with a real Celery worker process, the real broker (Redis) and PostgreSQL:
kill -9 in the middle of a batch, a task delivered twice, the broker down while events arrive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from django.conf import settings
from django.db import connection

from core.features import hotstore
from core.features.models import ItemFeatures, JobRun, UserFeatures, Watermark
from core.features.pipeline import events_highest_id

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[3]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def celery_process(tmp_path, store) -> Iterator[Callable[..., subprocess.Popen]]:
    """start("worker" | "beat", **env) -> a Celery process on the test database and broker."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    started: list[subprocess.Popen] = []

    def start(kind: str = "worker", **extra: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.FEATURES_REDIS_URL,
            "DJANGO_ENV": "test",
            "RECOMMENDER_VAR_DIR": str(tmp_path / "var"),
            **extra,
        }
        args = [sys.executable, "-m", "celery", "-A", "recommender", kind, "--loglevel=INFO"]
        if kind == "worker":
            args += ["--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        else:
            args += [f"--schedule={tmp_path / 'beat-schedule'}"]
        log = open(tmp_path / f"{kind}-{len(started)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


def _specs(count: int) -> list[tuple]:
    kinds = ("view", "view", "click", "add_to_cart", "purchase")
    return [(f"u{n % 97}", f"i{(n * 7) % 131}", kinds[n % 5], n) for n in range(count)]


def _expected(specs: list[tuple]) -> tuple[dict[str, Counter], dict[str, Counter]]:
    users: dict[str, Counter] = {}
    items: dict[str, Counter] = {}
    for user, item, kind, _ in specs:
        users.setdefault(user, Counter())[kind] += 1
        items.setdefault(item, Counter())[kind] += 1
    return users, items


def _stored() -> tuple[dict[str, Counter], dict[str, Counter]]:
    from core.catalog.models import Item, User

    user_ext = dict(User.objects.values_list("id", "external_id"))
    item_ext = dict(Item.objects.values_list("id", "external_id"))
    users = {user_ext[r.user_id]: Counter(r.counts) for r in UserFeatures.objects.all()}
    items = {item_ext[r.item_id]: Counter(r.counts) for r in ItemFeatures.objects.all()}
    return users, items


def _watermark() -> int:
    mark = Watermark.objects.filter(pk="activity").first()
    return mark.last_event_id if mark else 0


def _caught_up() -> bool:
    """Both consumers of the per-shopper and per-item features at the last event."""
    highest = events_highest_id()
    marks = Watermark.objects.filter(pk__in=("activity", "items"))
    return sorted(mark.last_event_id for mark in marks) == [highest, highest]


def test_kill_9_mid_batch_then_restart_counts_every_event_exactly_once(
    ingest, store, celery_process
):
    # given: 40,000 events stored, folded 1,000 per batch by a real worker
    from core.features.tasks import features_refresh_task

    specs = _specs(40_000)
    for start in range(0, len(specs), 10_000):
        ingest(specs[start : start + 10_000], prefix=f"k{start}")
    worker = celery_process("worker", FEATURES_BATCH_SIZE="1000", FEATURES_TRIGGER_ON_COMMIT="0")
    features_refresh_task.apply_async(kwargs={"trigger": "test"})

    # when: kill -9 while a run is in the middle of its batches
    highest = events_highest_id()
    wait_for(
        lambda: 0 < _watermark() < highest - 20_000,
        60,
        "the worker to be part-way through",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    part = _watermark()
    assert 0 < part < highest

    # and a second worker starts and is asked again (what the sweep does)
    celery_process("worker", FEATURES_BATCH_SIZE="1000", FEATURES_TRIGGER_ON_COMMIT="0")
    features_refresh_task.apply_async(kwargs={"trigger": "test"})
    wait_for(_caught_up, 60, "the restarted worker to catch up")

    # then: every event counted exactly once, in the tables and in Redis
    expected_users, expected_items = _expected(specs)
    stored_users, stored_items = _stored()
    assert stored_users == expected_users
    assert stored_items == expected_items
    for user, counts in expected_users.items():
        blob = orjson.loads(store.get(hotstore.user_key(user)))
        assert Counter(blob["c"]) == counts
    assert JobRun.objects.filter(consumer="activity", status="abandoned").count() == 1

    # when: the same task message is delivered twice more
    features_refresh_task.apply_async(kwargs={"trigger": "again"}, task_id="twice")
    features_refresh_task.apply_async(kwargs={"trigger": "again"}, task_id="twice")
    wait_for(
        lambda: (
            JobRun.objects.filter(consumer="activity", trigger="again", status="succeeded").count()
            == 2
        ),
        30,
        "both deliveries to run",
    )

    # then: nothing changed
    assert _stored() == (stored_users, stored_items)


def test_broker_down_events_still_accepted_and_caught_up_when_it_returns(
    make_client, store, celery_process
):
    # given: the web side's broker is unreachable
    from recommender.celery import app

    api = make_client("events:write")
    real_broker = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    _forget_connections(app)
    try:
        # when
        started = time.monotonic()
        response = api.post(
            "/api/v1/events",
            orjson.dumps(
                [
                    {"event_id": f"b-{n}", "user_id": "ub", "item_id": f"i{n}", "type": "view"}
                    for n in range(5)
                ]
            ),
            content_type="application/json",
        )
        elapsed = time.monotonic() - started
    finally:
        app.conf.broker_url = real_broker
        _forget_connections(app)

    # then: accepted (stored), without waiting on the broker
    assert response.status_code == 202 and response.json()["accepted"] == 5
    assert elapsed < 2.0
    assert UserFeatures.objects.count() == 0

    # when: the broker is back; beat's sweep and a worker run
    celery_process("worker")
    celery_process("beat", FEATURES_SWEEP_SECONDS="0.5")

    # then
    wait_for(_caught_up, 60, "the sweep to catch up")
    from core.features import selectors

    assert [e.item_id for e in selectors.user_history(user_id="ub")] == [f"i{n}" for n in range(5)]


def test_an_accepted_event_reaches_the_users_features_through_the_on_commit_trigger(
    make_client, store, celery_process
):
    # given: a worker, no beat (so only the on-commit trigger can do it)
    from core.features import selectors

    api = make_client("events:write")
    celery_process("worker")
    wait_for(lambda: _ping(), 30, "the worker")

    # when
    response = api.post(
        "/api/v1/events",
        orjson.dumps({"event_id": "fresh-1", "user_id": "uf", "item_id": "if", "type": "click"}),
        content_type="application/json",
    )

    # then
    assert response.status_code == 202
    history = wait_for(lambda: selectors.user_history(user_id="uf"), 30, "the event in features")
    assert [(e.item_id, e.type) for e in history] == [("if", "click")]


def _forget_connections(app) -> None:
    from core.features import services

    app._pool = None
    app.amqp._producer_pool = None
    services._local.__dict__.clear()


def _ping() -> bool:
    from recommender.celery import app

    return bool(app.control.ping(timeout=0.5))
