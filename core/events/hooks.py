"""What runs after events are committed. A plain function call, not a Django signal."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Collection

logger = logging.getLogger(__name__)

# At most one feature-refresh trigger per this many seconds per process. A trigger is a Redis
# round trip (and, when no refresh is waiting, a broker publish); under ingest load it timed out
# (0.2 s) on request paths. Triggers now run on a background thread of each process: the request
# only flags that one is wanted. The first ingest after a quiet spell triggers at once; later
# ones within the interval are folded into one trailing trigger, so an accepted event waits at
# most this long for its refresh to be queued (issue #4's freshness: 2 s p95). Beat's sweep
# (FEATURES_SWEEP_SECONDS) stays the safety net for a trigger that fails.
TRIGGER_INTERVAL_SECONDS = 0.1


class _Throttle:
    """Runs `fire` on one daemon thread per process, at most once per `interval`, whenever it
    was requested since the last run. Started lazily and again after a fork (a web or Celery
    worker)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None

    def request(self) -> None:
        if self._pid != os.getpid():
            self._start()
        self._wanted.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits the flag but not the thread.
            self._wanted = threading.Event()
            threading.Thread(target=self._run, name="events-trigger", daemon=True).start()
            self._pid = os.getpid()

    def _run(self) -> None:
        wanted = self._wanted
        while True:
            wanted.wait()
            wanted.clear()
            _fire()
            # Sleep on a fresh wait so a flag set meanwhile is served right after the interval.
            threading.Event().wait(self.interval)

    def flush(self) -> None:
        """At exit: a trigger still owed (the last chunk of an import) runs now."""
        if self._pid == os.getpid() and self._wanted.is_set():
            self._wanted.clear()
            _fire()


def _fire() -> None:
    from core.features.services import features_refresh_trigger

    try:
        features_refresh_trigger()  # never raises by contract; the thread must survive anyway
    except Exception:
        logger.warning("events: feature refresh trigger failed", exc_info=True)


_throttle = _Throttle(TRIGGER_INTERVAL_SECONDS)
atexit.register(_throttle.flush)


def events_ingested(*, accepted: int, user_ids: Collection[int]) -> None:
    """Called once per committed ingest (HTTP batch or import chunk) that stored at least one new
    event, through `transaction.on_commit`, so the events are durable and visible.

    `accepted`: how many new events; `user_ids`: our ids of the shoppers in the batch (a superset
    of those with new events). The feature pipeline hooks here: it enqueues one refresh unless
    one is already waiting. Keep it cheap: it runs on the request path, and must not raise (the
    events are already stored). It costs a thread-safe flag; the trigger itself runs on this
    process's trigger thread, at most once per TRIGGER_INTERVAL_SECONDS."""
    _throttle.request()
