"""A circuit breaker, so that a dead model server costs microseconds instead of a timeout per call.

closed --(N transient failures in a row)--> open --(cool-down passes)--> half-open: one call (the
probe) goes through while the others keep failing fast; its success closes the circuit, its
failure opens it for another cool-down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ml.serving.client.errors import CircuitOpen

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        return self._state

    def before_call(self) -> None:
        """Raise CircuitOpen, or let the call through (as the probe when half-open)."""
        if self._state == CLOSED:  # the common case, read without the lock
            return
        with self._lock:
            if self._state == CLOSED:
                return
            if self._state == OPEN:
                waited = self._clock() - self._opened_at
                if waited < self.reset_timeout:
                    raise CircuitOpen(
                        f"circuit open after {self._failures} transient failures; "
                        f"retrying in {self.reset_timeout - waited:.3f}s"
                    )
                self._state = HALF_OPEN
            if self._probe_in_flight:
                raise CircuitOpen("circuit half-open: a probe call is in flight")
            self._probe_in_flight = True

    def record_success(self) -> None:
        """The server answered (with a result or a non-transient error)."""
        if self._state == CLOSED and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._state = CLOSED
            self._probe_in_flight = False

    def record_failure(self) -> None:
        """A transient failure (UNAVAILABLE after the retry, DEADLINE_EXCEEDED)."""
        with self._lock:
            self._failures += 1
            self._probe_in_flight = False
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without telling anything about the server (a client-side error)."""
        if self._probe_in_flight:
            with self._lock:
                self._probe_in_flight = False

    def reset(self) -> None:
        """Back to closed, with a fresh lock (after fork the old one may be held forever)."""
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._probe_in_flight = False
