"""The feature-refresh trigger after an ingest commit: off the request path, at most one per
interval per process, and never lost (a request within the interval gets a trailing trigger)."""

from __future__ import annotations

import threading
import time

from core.events import hooks


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_many_ingests_within_the_interval_make_one_leading_and_one_trailing_trigger(monkeypatch):
    # given: a throttle whose trigger counts its calls
    calls: list[float] = []
    monkeypatch.setattr(hooks, "_fire", lambda: calls.append(time.monotonic()))
    throttle = hooks._Throttle(interval=0.3)

    # when: one ingest, then a burst of 50 while the first trigger's interval runs
    throttle.request()
    _wait_for(lambda: len(calls) == 1, 5)
    burst_started = time.monotonic()
    for _ in range(50):
        throttle.request()

    # then: the burst is served by exactly one more trigger, one interval after the first
    _wait_for(lambda: len(calls) == 2, 5)
    assert calls[1] - calls[0] >= 0.29
    assert calls[1] >= burst_started
    threading.Event().wait(0.5)  # nothing more is owed: no third trigger comes
    assert len(calls) == 2


def test_a_request_costs_no_trigger_on_the_callers_thread(monkeypatch):
    # given: a trigger that blocks (Redis timing out)
    release = threading.Event()
    fired_on: list[str] = []

    def slow_fire() -> None:
        fired_on.append(threading.current_thread().name)
        release.wait(5)

    monkeypatch.setattr(hooks, "_fire", slow_fire)
    throttle = hooks._Throttle(interval=0.01)

    # when
    started = time.monotonic()
    throttle.request()
    throttle.request()
    elapsed = time.monotonic() - started

    # then: the caller did not wait; the trigger ran on the trigger thread
    try:
        _wait_for(lambda: fired_on, 5)
        assert elapsed < 1.0  # the trigger blocks for 5 s; starting the thread is all
        assert fired_on == ["events-trigger"]
    finally:
        release.set()


def test_events_ingested_reaches_the_feature_trigger(monkeypatch):
    # given
    from core.features import services

    calls: list[int] = []
    monkeypatch.setattr(services, "features_refresh_trigger", lambda: calls.append(1))
    monkeypatch.setattr(hooks, "_throttle", hooks._Throttle(interval=0.01))

    # when
    hooks.events_ingested(accepted=3, user_ids={1, 2})

    # then
    _wait_for(lambda: calls, 5)
