"""Recommendation requests run without pause while versions are pushed, deployed as canaries,
promoted and rolled back: every request is answered by the model (no fallback, no error), and the
label the serving path asks for is never refused."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

import pytest
from django.db import connection

from core.recommendations import services as recommendations
from core.registry import services
from core.registry.models import VersionStatus

from .conftest import NUM_ITEMS
from .helpers import push_and_validate

NAME = "recommender"


@pytest.mark.django_db(transaction=True)
def test_no_request_fails_through_push_promote_and_rollback(
    model_server, repository, archives, catalog, settings
):
    settings.RECOMMENDATIONS_CACHE_TTL_SECONDS = 0  # every request reaches the model server
    settings.REGISTRY_ASSIGNMENT_TTL_SECONDS = 0.5  # web processes see changes late, on purpose
    refusals: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: refusals.append(record.getMessage())  # type: ignore[method-assign]
    gateway_logger = logging.getLogger("core.recommendations.model_gateway")
    gateway_logger.addHandler(handler)
    first = push_and_validate(archives["good"])
    services.model_version_deploy(name=NAME, number=first.number, mode="stable", actor="t")

    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: Counter[int | None] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def shopper(worker: int) -> None:
        rng = random.Random(worker)
        try:
            while not stop.is_set():
                user = f"shopper-{rng.randrange(1000)}"
                history = [f"item-{rng.randrange(NUM_ITEMS)}" for _ in range(rng.randint(1, 4))]
                try:
                    page = recommendations.recommendations_for_user(
                        user_id=user, count=5, session_items=history
                    )
                except Exception as error:  # a failed request is what this test looks for
                    with lock:
                        problems.append(f"{type(error).__name__}: {error}")
                    continue
                with lock:
                    outcomes[page.source] += 1
                    versions[page.model_version] += 1
        finally:
            connection.close()

    workers = [threading.Thread(target=shopper, args=(i,), daemon=True) for i in range(4)]
    for worker in workers:
        worker.start()

    def served_so_far() -> int:
        with lock:
            return sum(outcomes.values())

    def let_requests_flow(at_least: int = 20) -> None:
        target = served_so_far() + at_least
        deadline = time.monotonic() + 60
        while served_so_far() < target and time.monotonic() < deadline:
            time.sleep(0.01)

    steps = []
    try:
        let_requests_flow()
        second = push_and_validate(archives["other"])  # push while serving
        assert second.status == VersionStatus.READY
        let_requests_flow()
        steps.append(
            services.model_version_deploy(
                name=NAME, number=second.number, mode="canary", traffic_percent=50, actor="t"
            )
        )
        let_requests_flow()
        steps.append(services.model_promote(name=NAME, actor="t"))
        let_requests_flow()
        third = push_and_validate(archives["third"])
        steps.append(
            services.model_version_deploy(
                name=NAME, number=third.number, mode="canary", traffic_percent=50, actor="t"
            )
        )
        let_requests_flow()
        steps.append(services.model_promote(name=NAME, actor="t"))
        let_requests_flow()
        steps.append(services.model_rollback(name=NAME, actor="t"))
        let_requests_flow()
        steps.append(services.model_rollback(name=NAME, actor="t"))
        let_requests_flow()
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        gateway_logger.removeHandler(handler)

    total = sum(outcomes.values())
    print(f"\n{total} requests through {len(steps)} changes: {dict(outcomes)} {dict(versions)}")
    assert problems == []
    assert total >= 150
    assert set(outcomes) == {"model"}, outcomes  # never a fallback tier
    assert {1, 2, 3} <= set(versions)
    assert [message for message in refusals if "refused" in message] == []
