"""`make chaos`: break one part of a private real stack at a time, under steady load.

    python -m core.system.resilience.chaos [--hold 8] [--only NAME ...] [--json]

The stack (`core.system.resilience.stack`: its own PostgreSQL cluster, a Redis for cache and
features, a Redis for the broker, the local model server, the web server, a Celery worker and beat)
gets recommendations GETs and event POSTs (unique event ids) at a fixed rate the whole time. One
fault after the other, each held `--hold` seconds, then the part is brought back:

- model-server: kill -9, restarted after the hold; recovered when a history never seen before
  is answered with `source: model` (includes the server's own start: TensorFlow, load, warmup).
- redis (cache + hot features): stopped, started empty; recovered when /readyz is 200 and the
  feature store has been rebuilt from PostgreSQL.
- broker (its own Redis): stopped, started empty (queued tasks lost); recovered when /readyz is
  200 and both feature consumers have folded every event stored before it came back.
- postgres: `pg_ctl stop -m fast`, started after the hold; recovered when /readyz is 200 and an
  event POST is accepted.
- worker: a burst of 3,000 events, then kill -9 of the Celery worker and its pool while a
  feature batch runs, restarted after the hold; recovered when the features cover every event.
- model-disk: the model repository's own filesystem (a tmpfs) filled and a training run started
  during the fault; recovered when, the space freed, a training run exports the next version
  and the model server serves it.

Per fault it prints the requests sent while the fault was on and until recovery, the answers by
status, the 5xx, the events the API accepted (202) and how many of them are in the database at
the end (lost must be 0), and the recovery time (seconds from the part being back until the
condition above holds). An honest 503 is allowed only where no answer can be honest: events
while PostgreSQL is down (nothing can commit them), and requests that need the database then.
Exit code 1 when an event is lost, a 5xx came where it is not allowed, or a part did not recover.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.recommendations.bench_serve import load_average

from .load import Load, stack_catalog
from .stack import MODEL_NAME, PrivateStack, http_get, say

RECOVERY_DEADLINE_SECONDS = 120.0
# Statuses that are an honest answer while a fault is on, per fault (any other 5xx is a bug).
ALLOWED_5XX: dict[str, set[int]] = {"postgres": {503}}


@dataclass
class FaultResult:
    fault: str
    held_seconds: float
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    disallowed_server_errors: int = 0
    events_accepted: int = 0
    events_stored: int = 0
    events_lost: int = 0
    recovered: bool = False
    recovery_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    skipped: str = ""

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        return self.recovered and self.events_lost == 0 and self.disallowed_server_errors == 0


class Probe:
    """What the recovery conditions look at, outside the load's own requests."""

    def __init__(self, stack: PrivateStack, users: list[str], items: list[str]) -> None:
        self.stack, self.users, self.items = stack, users, items
        self._count = 0

    def ready(self) -> bool:
        return self.stack.readyz()[0] == 200

    def model_answers(self) -> bool:
        """A history never seen before (a unique session item list) can only come from the
        model or a fallback: `source: model` means the model path is back."""
        self._count += 1
        user = self.users[self._count % len(self.users)]
        session = ",".join(self.items[(self._count + n) % len(self.items)] for n in range(3))
        status, body = http_get(
            self.stack.ports["web"],
            f"/api/v1/users/{user}/recommendations?count=5&session_items={session}"
            f"&exclude=probe-{self._count}",
            self.stack.api_key,
        )
        return status == 200 and body.get("source") == "model"

    def event_accepted(self) -> bool:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.stack.ports["web"], timeout=5)
        try:
            body = json.dumps(
                {"event_id": f"probe-{uuid.uuid4().hex}", "user_id": self.users[0],
                 "item_id": self.items[0], "type": "view"}
            )  # fmt: skip
            connection.request(
                "POST", "/api/v1/events", body=body,
                headers={"Authorization": f"Bearer {self.stack.api_key}",
                         "Content-Type": "application/json"},
            )  # fmt: skip
            return connection.getresponse().status == 202
        finally:
            connection.close()

    def features_cover(self, event_id: int) -> bool:
        """Both consumers of the event stream have folded every event up to `event_id`."""
        rows = self.stack.sql(
            "SELECT consumer, last_event_id FROM features_watermark"
            " WHERE consumer IN ('activity', 'neighbours')"
        )
        return len(rows) == 2 and all(int(mark) >= event_id for _, mark in rows)

    def highest_event_id(self) -> int:
        return int(self.stack.sql("SELECT coalesce(max(id), 0) FROM events_event")[0][0])

    def feature_store_rebuilt(self) -> bool:
        import redis

        client = redis.Redis(port=self.stack.ports["redis"], socket_timeout=1)
        try:
            return bool(client.exists("feat:wm:activity"))
        finally:
            client.close()

    def served_version(self) -> int | None:
        status, body = self.stack.readyz()
        detail = str(body.get("checks", {}).get("model_server", {}).get("detail", ""))
        if status != 200 or "version" not in detail:
            return None
        return int(detail.rsplit("version", 1)[1].split()[0])


def wait_until(check: Callable[[], bool], seconds: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with contextlib.suppress(Exception):  # the part is still coming back
            if check():
                return time.monotonic() - started
        time.sleep(0.1)
    return None


# --- the faults: each breaks its part, holds, brings it back, and waits for recovery ----------


def fault_model_server(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    stack.parts["model-server"].kill()
    time.sleep(hold)
    restarted = time.monotonic()
    stack.restart("model-server")
    serving = wait_until(lambda: probe.served_version() is not None, RECOVERY_DEADLINE_SECONDS)
    if serving is not None:
        result.notes.append(f"restarted; serving a version again after {serving:.1f} s")
    _recover(result, lambda: probe.ready() and probe.model_answers(), 0.0, since=restarted)


def fault_redis(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    stack.redis_stop("redis")
    time.sleep(hold)
    stack.redis_start("redis")
    result.notes.append("came back empty (no persistence)")
    _recover(result, lambda: probe.ready() and probe.feature_store_rebuilt(), 0.0)


def fault_broker(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    stack.redis_stop("broker")
    time.sleep(hold)
    stack.redis_start("broker")
    target = probe.highest_event_id()
    result.notes.append("came back empty: queued tasks lost, beat's sweep catches up")
    _recover(result, lambda: probe.ready() and probe.features_cover(target), 0.0)


def fault_postgres(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    stack.postgres_ctl("stop")
    time.sleep(hold)
    stack.postgres_ctl("start")
    _recover(result, lambda: probe.ready() and probe.event_accepted(), 0.0)


def fault_worker(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    burst, accepted = _post_burst(stack, probe, 3000)
    result.events_accepted += accepted
    result.notes.append(f"burst of {burst} events accepted: {accepted}")
    # Kill while the burst is being folded: a run of the activity consumer is recorded as
    # running (or, if it was too quick, right after it started).
    running = wait_until(
        lambda: bool(stack.sql("SELECT 1 FROM features_jobrun WHERE status = 'running' LIMIT 1")),
        3,
    )
    stack.parts["worker"].kill()
    result.notes.append(
        "killed mid-batch (a job run was running)" if running is not None
        else "killed (no job run was seen running: the batch may have finished first)"
    )  # fmt: skip
    target = probe.highest_event_id()
    time.sleep(hold)
    stack.restart("worker")
    _recover(result, lambda: probe.features_cover(target), 0.0)


def _post_burst(stack: PrivateStack, probe: Probe, count: int) -> tuple[int, int]:
    import http.client

    run = uuid.uuid4().hex[:8]
    events = [
        {"event_id": f"burst-{run}-{n}", "user_id": probe.users[n % len(probe.users)],
         "item_id": probe.items[(n * 7) % len(probe.items)], "type": "view"}
        for n in range(count)
    ]  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports["web"], timeout=60)
    try:
        connection.request(
            "POST", "/api/v1/events", body=json.dumps({"events": events}),
            headers={"Authorization": f"Bearer {stack.api_key}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
    finally:
        connection.close()
    if response.status != 202:
        return count, 0
    stack_burst_ids.extend(event["event_id"] for event in events)
    return count, int(body.get("accepted", 0))


# Event ids of bursts, counted with the fault that sent them (see run()).
stack_burst_ids: list[str] = []


def fault_model_disk(stack: PrivateStack, probe: Probe, hold: float, result: FaultResult) -> None:
    if not stack.model_repository_is_tmpfs:
        result.skipped = (
            "needs a model repository on a filesystem of its own: mounting a tmpfs failed "
            "(it needs root, or CAP_SYS_ADMIN in a container)"
        )
        return
    before = probe.served_version()
    filler = stack.model_repository / "filler"
    written = 0
    try:
        with open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
                written += 1
    except OSError:
        pass
    result.notes.append(f"filled with {written} MB")
    started = time.monotonic()
    try:
        stack.manage("train_model", "--small")
        result.notes.append("a training run during the fault exported a version (unexpected)")
    except RuntimeError as exc:
        reason = "no space left" if "No space left" in str(exc) else str(exc).splitlines()[-1]
        result.notes.append(f"training during the fault failed ({reason[:60]})")
    leftovers = sorted(
        path.name for path in (stack.model_repository / MODEL_NAME).iterdir()
        if not path.name.isdigit()
    )  # fmt: skip
    if leftovers:
        result.notes.append(f"left behind: {leftovers}")
    remaining = hold - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    if probe.served_version() != before:
        result.notes.append(f"served version changed during the fault: {probe.served_version()}")
    filler.unlink()
    back = time.monotonic()
    try:
        stack.manage("train_model", "--small")
    except RuntimeError as exc:
        result.notes.append(f"training after the fault failed: {str(exc)[-200:]}")
        return
    target = (before or 0) + 1

    def serves_next() -> bool:
        version = probe.served_version()
        return version is not None and version >= target

    waited = wait_until(serves_next, RECOVERY_DEADLINE_SECONDS)
    if waited is not None:
        result.recovered = True
        result.recovery_seconds = round(time.monotonic() - back, 2)
        result.notes.append(f"version {target} exported and served after the fault")


def _recover(
    result: FaultResult,
    condition: Callable[[], bool],
    already: float = 0.0,
    since: float | None = None,
) -> None:
    """Wait for `condition`; the recovery time runs from `since` (a monotonic time) when given,
    else from now plus `already` seconds."""
    started = time.monotonic() if since is None else since
    if wait_until(condition, RECOVERY_DEADLINE_SECONDS) is not None:
        result.recovered = True
        result.recovery_seconds = round(time.monotonic() - started + already, 2)


FAULTS: dict[str, Callable[[PrivateStack, Probe, float, FaultResult], None]] = {
    "model-server": fault_model_server,
    "redis": fault_redis,
    "broker": fault_broker,
    "postgres": fault_postgres,
    "worker": fault_worker,
    "model-disk": fault_model_disk,
}


def run(
    *,
    hold: float = 8.0,
    only: list[str] | None = None,
    settle: float = 2.0,
    recommendations_rate: float = 12.0,
    event_rate: float = 6.0,
    keep_logs: Path | None = None,
) -> tuple[list[FaultResult], dict]:
    """Start a private stack, run the faults one after the other under load; the results and
    the run's context (load average, seconds)."""
    names = only or list(FAULTS)
    unknown = set(names) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults {sorted(unknown)}; known: {list(FAULTS)}")
    started = time.monotonic()
    context: dict = {"load_average_before": load_average()}
    results: list[FaultResult] = []
    with PrivateStack(keep_logs=keep_logs) as stack:
        users, items = stack_catalog(stack.sql)
        probe = Probe(stack, users, items)
        load = Load(
            stack.ports["web"], stack.api_key, users, items,
            recommendations_rate=recommendations_rate, event_rate=event_rate,
        )  # fmt: skip
        load.set_phase("warm-up")
        load.start()
        time.sleep(settle)
        bursts: dict[str, list[str]] = {}
        for name in names:
            result = FaultResult(fault=name, held_seconds=hold)
            say(f"fault {name}: on for {hold:g} s")
            load.set_phase(name)
            stack_burst_ids.clear()
            fault_started = time.monotonic()
            try:
                FAULTS[name](stack, probe, hold, result)
            finally:
                bursts[name] = list(stack_burst_ids)
            say(
                f"fault {name}: "
                + (f"skipped ({result.skipped})" if result.skipped else
                   f"recovered in {result.recovery_seconds} s" if result.recovered else
                   "NOT recovered")
                + f" ({time.monotonic() - fault_started:.0f} s)"
            )  # fmt: skip
            time.sleep(settle)  # the recovered stack, still under this fault's label
            load.set_phase(f"after {name}")
            results.append(result)
            if not result.skipped and not result.recovered:
                stack.wait_ready(RECOVERY_DEADLINE_SECONDS)
        load.stop()
        for result in results:
            _count(result, load, stack, bursts.get(result.fault, []))
        after = [f"after {name}" for name in names] + ["warm-up"]
        context["requests_between_faults"] = sum(load.figures(p).requests for p in after)
        context["server_errors_between_faults"] = sum(load.figures(p).server_errors for p in after)
        context["model_repository"] = (
            f"tmpfs of {stack.model_repository_is_tmpfs and 32} MB"
            if stack.model_repository_is_tmpfs else "plain folder (no mount permission)"
        )  # fmt: skip
    context["load_average_after"] = load_average()
    context["seconds"] = round(time.monotonic() - started, 1)
    context["rates_per_second"] = {"recommendations": recommendations_rate, "events": event_rate}
    return results, context


def _count(result: FaultResult, load: Load, stack: PrivateStack, burst_ids: list[str]) -> None:
    figures = load.figures(result.fault)
    result.requests = figures.requests
    result.statuses = {str(k): v for k, v in sorted(figures.statuses.items())}
    result.sources = dict(figures.sources)
    result.server_errors = figures.server_errors
    allowed = ALLOWED_5XX.get(result.fault, set())
    result.disallowed_server_errors = sum(
        count
        for status, count in figures.statuses.items()
        if status >= 500 and status not in allowed
    )
    accepted = load.accepted_ids(result.fault)
    result.events_accepted += len(accepted)
    ids = accepted + burst_ids
    stored = stack.sql("SELECT count(*) FROM events_event WHERE event_id = ANY(%s)", [ids])
    result.events_stored = int(stored[0][0])
    result.events_lost = max(0, result.events_accepted - result.events_stored)


def print_table(results: list[FaultResult], context: dict) -> None:
    rates = context["rates_per_second"]
    print(
        f"\nFault suite: {rates['recommendations']:g} recommendations/s + {rates['events']:g} "
        f"events/s throughout; model repository: {context['model_repository']}\n"
    )
    print(
        "| fault | held s | requests | answers by status | 5xx | events accepted | "
        "stored | lost | recovery s | |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        if r.skipped:
            print(f"| {r.fault} | | | | | | | | | skipped: {r.skipped} |")
            continue
        statuses = ", ".join(f"{k}: {v}" for k, v in r.statuses.items())
        recovery = f"{r.recovery_seconds:.1f}" if r.recovery_seconds is not None else "never"
        print(
            f"| {r.fault} | {r.held_seconds:g} | {r.requests} | {statuses} | {r.server_errors} | "
            f"{r.events_accepted} | {r.events_stored} | {r.events_lost} | {recovery} | "
            f"{'ok' if r.ok else 'FAILED'} |"
        )
    print()
    for r in results:
        sources = ", ".join(f"{k} {v}" for k, v in sorted(r.sources.items()))
        print(f"- {r.fault}: {'; '.join(r.notes) or '-'}; sources: {sources or '-'}")
    print(
        f"\nbetween faults: {context['requests_between_faults']} requests, "
        f"{context['server_errors_between_faults']} 5xx; {context['seconds']} s in all; load "
        f"average before {context['load_average_before']}, after {context['load_average_after']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold", type=float, default=8.0, help="seconds each fault is on")
    parser.add_argument("--only", nargs="+", choices=list(FAULTS), help="run only these faults")
    parser.add_argument("--logs", type=Path, help="copy every process's log to this folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.hold <= 120:
        parser.error("--hold must be from 1 to 120 seconds (the run is bounded)")
    results, context = run(hold=args.hold, only=args.only, keep_logs=args.logs)
    if args.json:
        print(json.dumps({"faults": [asdict(r) | {"ok": r.ok} for r in results], **context}))
    else:
        print_table(results, context)
    failed = [r.fault for r in results if not r.ok] + (
        ["5xx between faults"] if context["server_errors_between_faults"] else []
    )
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
