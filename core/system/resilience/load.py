"""Steady traffic at a fixed rate: recommendations GETs and event POSTs with unique event ids.

Each request has a fixed send time (open loop): a server that stalls cannot slow the load down
and so hide its stall. Every answer is recorded with its phase label, status and `source`, and
every event id the API accepted (202) is kept so the caller can look for it in the database.
Loopback only; bounded: the caller stops it, and a request waits at most `timeout` seconds.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    at: float  # monotonic time of the send
    phase: str
    kind: str  # "recommendations" or "events"
    status: int  # 0: no HTTP answer (connection refused, timeout)
    source: str  # the recommendation's `source`, else ""
    seconds: float


@dataclass
class PhaseFigures:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    events_accepted: int = 0

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in (200, 202))

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


class Load:
    """`recommendations_rate` GETs and `event_rate` POSTs (one event each) per second."""

    def __init__(
        self,
        port: int,
        key: str,
        users: list[str],
        items: list[str],
        *,
        recommendations_rate: float = 12.0,
        event_rate: float = 6.0,
        threads: int = 12,
        timeout: float = 10.0,
    ) -> None:
        self.port, self.key, self.users, self.items = port, key, users, items
        self.recommendations_rate, self.event_rate = recommendations_rate, event_rate
        self.threads, self.timeout = threads, timeout
        self.phase = "start"
        self.outcomes: list[Outcome] = []
        self.accepted: dict[str, list[str]] = {}  # phase -> event ids answered 202
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._rng = random.Random(3)
        self._run_id = uuid.uuid4().hex[:8]
        self._sequence = 0

    # --- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._schedule_start = time.monotonic() + 0.2
        self._next = 0
        for _ in range(self.threads):
            thread = threading.Thread(target=self._worker, daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=self.timeout + 5)

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    # --- figures -------------------------------------------------------------------------------

    def figures(self, phase: str) -> PhaseFigures:
        figures = PhaseFigures()
        with self._lock:
            outcomes = [outcome for outcome in self.outcomes if outcome.phase == phase]
            figures.events_accepted = len(self.accepted.get(phase, []))
        for outcome in outcomes:
            figures.requests += 1
            figures.statuses[outcome.status] += 1
            if outcome.source:
                figures.sources[outcome.source] += 1
        return figures

    def accepted_ids(self, phase: str | None = None) -> list[str]:
        with self._lock:
            if phase is not None:
                return list(self.accepted.get(phase, []))
            return [event_id for ids in self.accepted.values() for event_id in ids]

    def outcomes_since(self, since: float) -> list[Outcome]:
        with self._lock:
            return [outcome for outcome in self.outcomes if outcome.at >= since]

    # --- the traffic ---------------------------------------------------------------------------

    def _next_job(self) -> tuple[float, str] | None:
        """The next (send time, kind): the two kinds interleaved at their rates."""
        with self._lock:
            if self._stop.is_set():
                return None
            total = self.recommendations_rate + self.event_rate
            index = self._next
            self._next += 1
            at = self._schedule_start + index / total
            share = self.event_rate / total
            # Bresenham-like interleaving: event slots are evenly spread among all slots.
            is_event = int((index + 1) * share) > int(index * share)
            return at, "events" if is_event else "recommendations"

    def _worker(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while True:
            job = self._next_job()
            if job is None:
                break
            at, kind = job
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if connection is None:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            started = time.monotonic()
            event_id = ""
            try:
                if kind == "events":
                    event_id, body = self._event()
                    connection.request(
                        "POST", "/api/v1/events", body=body, headers=self._headers(json_body=True)
                    )
                else:
                    connection.request("GET", self._recommendations_path(), headers=self._headers())
                response = connection.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = None
                status, payload = 0, b""
            source = ""
            if kind == "recommendations" and status == 200:
                try:
                    source = str(json.loads(payload).get("source", ""))
                except ValueError:
                    source = "unparseable"
            with self._lock:
                phase = self.phase
                self.outcomes.append(
                    Outcome(started, phase, kind, status, source, time.monotonic() - started)
                )
                if kind == "events" and status == 202:
                    self.accepted.setdefault(phase, []).append(event_id)
        if connection is not None:
            connection.close()

    def _headers(self, json_body: bool = False) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}", "Connection": "keep-alive"}
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _recommendations_path(self) -> str:
        with self._lock:
            user = self._rng.choice(self.users)
            # Half the requests carry a session item: a new history, so the model is asked
            # (not the answer cache) and `source: model` shows the model path works.
            session = self._rng.choice(self.items) if self._rng.random() < 0.5 else None
        path = f"/api/v1/users/{user}/recommendations?count=10"
        return path + (f"&session_items={session}" if session else "")

    def _event(self) -> tuple[str, str]:
        with self._lock:
            self._sequence += 1
            event_id = f"load-{self._run_id}-{self._sequence}"
            user = self._rng.choice(self.users)
            item = self._rng.choice(self.items)
            kind = self._rng.choice(["view", "view", "click", "add_to_cart"])
        body = {"event_id": event_id, "user_id": user, "item_id": item, "type": kind}
        return event_id, json.dumps(body)


def stack_catalog(sql) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Shopper and item ids of the private stack's storefront."""
    users = [row[0] for row in sql("SELECT external_id FROM catalog_user ORDER BY id LIMIT 300")]
    items = [row[0] for row in sql("SELECT external_id FROM catalog_item ORDER BY id LIMIT 200")]
    if not users or not items:
        raise SystemExit("the private stack has no storefront loaded")
    return users, items
