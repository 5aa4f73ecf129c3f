"""Feature pipeline benchmark (`make bench-features`): batch throughput, then freshness under
ingestion load.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/recommender \\
    REDIS_URL=redis://127.0.0.1:6379/9 python -m core.features.bench --events 1000000

1. Throughput: `--events` events are stored through the ingestion service (COPY path), then the
   activity consumer (user + item features) folds all of them from watermark 0, timed, with its
   Redis writes and without; then the neighbours consumer (co-occurrence). Printed as events/s.
2. Freshness: gunicorn (the real API), a Celery worker and beat run on the same machine; client
   threads post batches of 1,000 events as fast as the server takes them (the ingestion benchmark's
   load) while a probe thread posts one event for a fresh shopper every `--probe-interval`
   seconds and polls Redis until that event is in the shopper's features. Printed: p50/p95/max
   from the 202 to the event being readable by serving, and the ingest rate meanwhile.

It works in its own database (`<name>_features_bench`, dropped and re-created) and flushes the
Redis database it is given, so it never touches a running backend's data.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from core.system import webserver

ROOT = Path(__file__).resolve().parents[2]
TYPES = ["view"] * 12 + ["click"] * 5 + ["add_to_cart"] * 2 + ["purchase"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events for throughput")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--load-seconds", type=float, default=30.0, help="freshness run length")
    parser.add_argument("--concurrency", type=int, default=4, help="load client connections")
    parser.add_argument(
        "--load-rate", type=int, default=0, help="events/s of the load (0: as fast as it goes)"
    )
    parser.add_argument("--web-workers", type=webserver.count, default=3, help="web server workers")
    parser.add_argument("--probe-interval", type=float, default=0.1)
    parser.add_argument("--shape", choices=("uniform", "sessions"), default="uniform")
    parser.add_argument("--session-length", type=float, default=10.0)
    parser.add_argument("--skip", default="", help="comma-separated: throughput,freshness")
    return parser.parse_args()


def bench_urls() -> tuple[str, str]:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/recommender")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit("bench-features needs PostgreSQL: set DATABASE_URL=postgres://...")
    name = (parts.path.lstrip("/") or "recommender") + "_features_bench"
    redis_url = os.environ.get("REDIS_URL") or sys.exit("bench-features needs REDIS_URL")
    return urlunsplit(parts._replace(path=f"/{name}")), redis_url


def recreate_database(url: str) -> None:
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    name = parts.path.lstrip("/")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def zipf_index(rng: random.Random, size: int) -> int:
    # Popular items are much more popular (roughly Zipf, s ~ 1).
    return min(size - 1, int(size ** rng.random()) - 1)


def event_dicts(args: argparse.Namespace, prefix: str, count: int, seed: int) -> list[dict]:
    """`uniform`: every event by a random shopper (the ingestion benchmark's shape; the worst
    case for per-shopper writes). `sessions`: 500 shoppers browse at once, each for a visit of
    `--session-length` events on average, interleaved (how storefront traffic arrives)."""
    rng = random.Random(seed)
    now = datetime.now(tz=UTC)
    open_sessions = [rng.randrange(args.users) for _ in range(500)]
    events = []
    for n in range(count):
        if args.shape == "sessions":
            slot = rng.randrange(len(open_sessions))
            user = open_sessions[slot]
            if rng.random() < 1.0 / args.session_length:
                open_sessions[slot] = rng.randrange(args.users)
        else:
            user = rng.randrange(args.users)
        events.append(
            {
                "event_id": f"{prefix}-{n}",
                "user_id": f"u{user}",
                "item_id": f"i{zipf_index(rng, args.items)}",
                "type": rng.choice(TYPES),
                "timestamp": (now - timedelta(seconds=rng.randrange(7 * 86400))).isoformat(),
            }
        )
    return events


def backend_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process's PostgreSQL backend (None unless the server runs
    on this machine and /proc shows it)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(store: object) -> float | None:
    """CPU seconds used so far by the Redis server (all its clients, not only this benchmark)."""
    if store is None:
        return None
    info = store.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"] + info["used_cpu_sys"])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of one process so far, from /proc; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> list[float]:
    """CPU seconds of the whole machine so far, every core (/proc/stat): user (with nice),
    system, interrupts (hard and soft: the loopback network's work lands here), stolen by the
    hypervisor, idle (with I/O wait)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return [(user + nice) / tick, system / tick, (irq + softirq) / tick, steal / tick,
            (idle + iowait) / tick]  # fmt: skip


def _descendants(roots: list[int]) -> set[int]:
    """`roots` and every process below them (gunicorn's and Celery's forked workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    found = set(roots)
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        grew = bool(below)
        found |= below
    return found


class CpuMeter:
    """CPU seconds used during the load by each part of the stack: the web, worker and beat
    process trees, their PostgreSQL backends (told apart by `application_name`, which the bench
    sets through PGAPPNAME), the rest of the PostgreSQL server, the Redis server (`INFO cpu`:
    every client, other people's too) and this process (load clients and probe). Sampled every
    half second, so a backend that closes during the load keeps what it used until its last
    sample."""

    def __init__(self, groups: dict[str, list[int]], database: str, store: object) -> None:
        self.groups, self.database, self.store = groups, database, store
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.conn = psycopg.connect(database, autocommit=True)
        self.samples: list[list[float]] = []

    def _sample(self, initial: bool = False) -> None:
        seen: dict[tuple[str, int], float] = {}
        for name, roots in self.groups.items():
            for pid in _descendants(roots):
                value = _proc_cpu(pid)
                if value is not None:
                    seen[(name, pid)] = value
        rows = self.conn.execute(
            "SELECT pid, application_name, datname = current_database() "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        ).fetchall()
        for pid, app, ours in rows:
            part = (
                f"PostgreSQL {app[6:]}" if ours and app.startswith("bench-") else "PostgreSQL other"
            )
            value = _proc_cpu(pid)
            if value is not None:
                seen[(part, pid)] = value
        redis_cpu = redis_cpu_seconds(self.store)
        if redis_cpu is not None:
            seen[("Redis", 0)] = redis_cpu
        times = os.times()
        seen[("bench client", 0)] = times.user + times.system
        self.samples.append(_machine_cpu())
        for key, value in seen.items():
            self.first.setdefault(key, 0.0 if not initial and key[1] else value)
            self.last[key] = value

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self._sample()

    def start(self) -> None:
        self.start_time = time.perf_counter()
        self._sample(initial=True)
        self.thread.start()

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self._sample()
        self.stop_time = time.perf_counter()
        self.conn.close()
        used: dict[str, float] = {}
        for key, value in self.last.items():
            used[key[0]] = used.get(key[0], 0.0) + value - self.first[key]
        return used

    def machine(self) -> str:
        """The whole machine's CPU during the load, in cores, by kind (see _machine_cpu)."""
        spent = [
            after - before for before, after in zip(self.samples[0], self.samples[-1], strict=True)
        ]
        seconds = self.stop_time - self.start_time
        names = ("user", "system", "interrupts", "stolen", "idle")
        return ", ".join(
            f"{name} {value / seconds:.2f}" for name, value in zip(names, spent, strict=True)
        )


# 1. Throughput ------------------------------------------------------------------------------------


def load_events(args: argparse.Namespace) -> None:
    """Store `--events` events through the ingestion service (COPY path), nothing folded yet."""
    from django.conf import settings

    from core.events.services import events_ingest
    from core.events.validation import EventIn

    settings.FEATURES_TRIGGER_ON_COMMIT = False  # no worker yet: nothing to enqueue for
    started = time.perf_counter()
    chunk = 50_000
    for start in range(0, args.events, chunk):
        count = min(chunk, args.events - start)
        events = [
            EventIn(
                index=n,
                event_id=row["event_id"],
                user_id=row["user_id"],
                item_id=row["item_id"],
                type=row["type"],
                value=None,
                timestamp=datetime.fromisoformat(row["timestamp"]),
                session_id=None,
                recommendation_id=None,
                context=None,
            )
            for n, row in enumerate(event_dicts(args, f"t{start}", count, seed=start))
        ]
        events_ingest(events=events, use_copy=True, id_cache={})
    print(
        f"loaded {args.events:,} events ({args.shape}, {args.users:,} shoppers, {args.items:,} "
        f"items) in {time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f}"
    )
    settings.FEATURES_TRIGGER_ON_COMMIT = True


def throughput(args: argparse.Namespace) -> None:
    from django.conf import settings

    from core.features import hotstore

    load_events(args)
    redis_url = settings.FEATURES_REDIS_URL
    # The batch job of user and item features is two consumers (each its own watermark): timed
    # alone, then side by side as the worker runs them (`features_refresh`), the job's rate.
    for label, names, url in (
        ("users + items, PostgreSQL only", ("activity", "items"), None),
        ("users + items, PostgreSQL + Redis", ("activity", "items"), redis_url),
        ("neighbours (co-occurrence), PostgreSQL + Redis", ("neighbours",), redis_url),
    ):
        settings.FEATURES_REDIS_URL = url
        hotstore.reset_clients()
        store = hotstore.client("job")
        for name in names:
            if store is not None:
                store.flushdb()
            run, elapsed, used = _timed_runs([name], store)
            _print_rate(f"  {name} alone" if len(names) > 1 else label, run, elapsed, used)
        if len(names) > 1:
            if store is not None:
                store.flushdb()
            run, elapsed, used = _timed_runs(list(names), store)
            _print_rate(f"{label}, side by side", run, elapsed, used)
    settings.FEATURES_REDIS_URL = redis_url
    hotstore.reset_clients()


def _timed_runs(names: list[str], store: Any) -> tuple[Any, float, list[float | None]]:
    """Fold every event with the consumers `names` from watermark 0, the first in this thread
    and the others each on a thread of its own: (the first's run, seconds, CPU seconds of
    Python, of their PostgreSQL backends and of Redis)."""
    from django.db import connection

    from core.features.pipeline import consumer_run
    from core.features.services import CONSUMERS

    def fold(name: str) -> tuple[Any, float | None]:
        before = backend_cpu_seconds()
        try:
            run = consumer_run(CONSUMERS[name], trigger="bench", budget=float("inf"), reset=True)
            after = backend_cpu_seconds()
            return run, None if before is None or after is None else after - before
        finally:
            if name != names[0]:
                connection.close()

    cpu = (time.process_time(), redis_cpu_seconds(store))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(names) - 1)) as pool:
        others = [pool.submit(fold, name) for name in names[1:]]
        results = [fold(names[0])] + [future.result() for future in others]
    elapsed = time.perf_counter() - started
    redis_after = redis_cpu_seconds(store)
    backend = [spent for _, spent in results]
    return (
        results[0][0],
        elapsed,
        [
            time.process_time() - cpu[0],
            None if None in backend else sum(spent or 0.0 for spent in backend),
            None if cpu[1] is None or redis_after is None else redis_after - cpu[1],
        ],
    )


def _print_rate(
    label: str, run: Any, elapsed: float, used: Sequence[float | None], events: int | None = None
) -> None:
    from django.conf import settings

    events = run.events_processed if events is None else events
    parts = [
        f"{name} {value / max(1, events) * 1e6:.1f}"
        for name, value in zip(("Python", "PostgreSQL", "Redis"), used, strict=True)
        if value is not None
    ]
    print(
        f"{label}: {events:,} events in {elapsed:.2f} s = {events / elapsed:,.0f} events/s "
        f"({run.batches} batches of <= {settings.FEATURES_BATCH_SIZE:,}); CPU us/event: "
        f"{', '.join(parts)}; load average {os.getloadavg()[0]:.1f}"
    )


# 2. Freshness under load -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path, role: str) -> subprocess.Popen:
    """Start one part of the stack; its PostgreSQL sessions are named `bench-<role>` (libpq's
    PGAPPNAME), so the CPU meter can tell its backends apart."""
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**env, "PGAPPNAME": f"bench-{role}"},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )


class Client:
    """One keep-alive connection to the API that reconnects when the server closed it."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes) -> dict:
        try:
            return post(self.conn, self.key, body)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return post(self.conn, self.key, body)


def post(conn: http.client.HTTPConnection, key: str, body: bytes) -> dict:
    conn.request(
        "POST",
        "/api/v1/events",
        body=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    response = conn.getresponse()
    payload = response.read()
    if response.status != 202:
        raise RuntimeError(f"{response.status}: {payload[:200]!r}")
    return orjson.loads(payload)


def freshness(args: argparse.Namespace, database_url: str, redis_url: str) -> None:
    import redis

    from core.features import hotstore
    from core.features.models import JobRun, Watermark
    from core.features.pipeline import events_highest_id
    from core.system.services import api_key_create

    key = api_key_create(name="bench", scopes=["events:write"]).raw_key
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    logs = Path(tempfile.mkdtemp(prefix="bench-features-"))
    python = sys.executable
    processes = [
        start(
            webserver.command(port=port, workers=args.web_workers, threads=2, python=python),
            env, logs / "web.log", "web",
        ),
        start(
            [python, "-m", "celery", "-A", "recommender", "worker", "--concurrency=2",
             "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
            env, logs / "worker.log", "worker",
        ),
        start(
            [python, "-m", "celery", "-A", "recommender", "beat", "--loglevel=WARNING",
             f"--schedule={logs / 'beat-schedule'}"],
            env, logs / "beat.log", "beat",
        ),
    ]  # fmt: skip
    store = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit(f"the web server did not start; see {logs}")
            time.sleep(0.2)
        # The worker and beat are up once a first event has gone all the way through.
        client = Client(port, key)
        client.post(
            orjson.dumps({"event_id": "warm", "user_id": "warm", "item_id": "i1", "type": "view"})
        )
        while store.get(hotstore.user_key("warm")) is None:
            if time.monotonic() > deadline + 60:
                sys.exit(f"the worker did not process the first event; see {logs}")
            time.sleep(0.05)
        stop = threading.Event()
        sent = [0]
        lock = threading.Lock()

        def load(thread: int) -> None:
            client = Client(port, key)
            batch = 0
            interval = 1000 * args.concurrency / args.load_rate if args.load_rate else 0.0
            next_at = time.perf_counter()
            while not stop.is_set():
                body = orjson.dumps(event_dicts(args, f"l{thread}-{batch}", 1000, seed=batch))
                client.post(body)
                batch += 1
                if interval:
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                with lock:
                    sent[0] += 1000

        delays: list[float] = []

        def probe() -> None:
            client = Client(port, key)
            n = 0
            while not stop.is_set():
                user = f"probe-{n}"
                body = orjson.dumps(
                    {"event_id": f"p-{n}", "user_id": user, "item_id": "i1", "type": "click"}
                )
                client.post(body)
                accepted = time.perf_counter()
                while store.get(hotstore.user_key(user)) is None:
                    if time.perf_counter() - accepted > 60:
                        break
                    time.sleep(0.005)
                delays.append(time.perf_counter() - accepted)
                n += 1
                time.sleep(args.probe_interval)

        threads = [threading.Thread(target=load, args=(n,)) for n in range(args.concurrency)]
        threads.append(threading.Thread(target=probe))
        meter = CpuMeter(
            {
                role: [process.pid]
                for role, process in zip(("web", "worker", "beat"), processes, strict=True)
            },
            database_url.replace("postgres://", "postgresql://", 1),
            store,
        )
        load_before = os.getloadavg()[0]
        first_run = JobRun.objects.order_by("-id").values_list("id", flat=True).first() or 0
        meter.start()
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(args.load_seconds)
        stop.set()
        highest = events_highest_id()
        behind = {
            mark.consumer: highest - mark.last_event_id
            for mark in Watermark.objects.filter(consumer__in=("activity", "items"))
        }
        for thread in threads[:-1]:
            thread.join()
        elapsed = time.perf_counter() - began
        used = meter.finish()
        machine = meter.machine()
        threads[-1].join()  # the probe waits for its last event to be readable
        print(
            f"freshness under load: ingest {sent[0] / elapsed:,.0f} events/s over HTTP "
            f"({sent[0]:,} events in {elapsed:.0f} s); {len(delays)} probes, 202 -> readable in "
            f"Redis: p50 {percentile(delays, 0.5) * 1000:.0f} ms, "
            f"p95 {percentile(delays, 0.95) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms; "
            f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
        )
        events = max(1, sent[0])
        print(
            "  CPU during the load, us per ingested event (s in all): "
            + ", ".join(
                f"{name} {seconds / events * 1e6:.1f} ({seconds:.1f})"
                for name, seconds in sorted(used.items(), key=lambda pair: -pair[1])
            )
            + f"; in all {sum(used.values()) / events * 1e6:.1f} us, "
            f"{sum(used.values()) / elapsed:.2f} cores; the whole machine, cores: {machine}"
        )
        for consumer in ("activity", "items", "neighbours"):
            runs = list(
                JobRun.objects.filter(id__gt=first_run, consumer=consumer).exclude(
                    status=JobRun.Status.SKIPPED
                )
            )
            folded = sum(run.events_processed for run in runs)
            batches = sum(run.batches for run in runs)
            print(
                f"  {consumer}: {len(runs)} runs, {batches} batches, {folded:,} events "
                f"(mean batch {folded / max(1, batches):,.0f}) recorded by the end"
                + (
                    f"; {behind[consumer]:,} events behind when the load stopped"
                    if consumer in behind
                    else ""
                )
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()


def main() -> None:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    database_url, redis_url = bench_urls()
    recreate_database(database_url)
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    if "throughput" not in skip:
        throughput(args)
    elif "freshness" not in skip:
        load_events(args)  # the same known shoppers and items as after the throughput part
    if "freshness" not in skip:
        from core.features.services import features_rebuild

        # Start with the tables folded up to the last event and Redis agreeing with them, as a
        # running system does.
        features_rebuild()
        freshness(args, database_url, redis_url)


if __name__ == "__main__":
    main()
