"""Ingestion benchmark (`make bench-ingest`): events over HTTP into PostgreSQL, compared with a raw
COPY of the same rows into the same table; single-event latency at a fixed rate; import_events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/recommender \\
        python -m core.events.bench_ingest --events 1000000

It works in its own database (`<name>_bench`, dropped and re-created) and starts its own gunicorn
on a free port, so it never touches the data of a running backend.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg

from core.system import webserver

ROOT = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events sent over HTTP")
    parser.add_argument("--batch", type=int, default=1000, help="events per request")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument(
        "--workers", type=webserver.count, default=3, help="web server worker processes"
    )
    parser.add_argument(
        "--threads", type=webserver.count, default=4, help="Python threads per web worker"
    )
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=200, help="single-event requests per second")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--import-events", type=int, default=1_000_000, help="rows for import")
    parser.add_argument("--skip", default="", help="comma-separated: http,latency,copy,import")
    return parser.parse_args()


def bench_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/recommender")
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit("bench-ingest needs PostgreSQL: set DATABASE_URL=postgres://...")
    name = parts.path.lstrip("/") or "recommender"
    return urlunsplit(parts._replace(path=f"/{name}_bench"))


def recreate_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if condition():
                return
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.1)


def make_events(args: argparse.Namespace, *, prefix: str, count: int, start: int = 0) -> list:
    """Live storefront traffic: random UUID idempotency keys (the worst case for the key index),
    timestamps within the last minute (clients buffer a little), a tenth with attribution."""
    rng = random.Random(f"{prefix}-{start}")
    now = datetime.now(tz=UTC)
    types = ["view"] * 12 + ["click"] * 5 + ["add_to_cart"] * 2 + ["purchase", "rating"]
    events = []
    for n in range(start, start + count):
        event_type = rng.choice(types)
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"user-{rng.randrange(args.users)}",
            "item_id": f"item-{rng.randrange(args.items)}",
            "type": event_type,
            "timestamp": (now - timedelta(seconds=rng.uniform(0, 60))).isoformat(),
            "session_id": f"s-{rng.randrange(10 * args.users)}",
        }
        if event_type == "rating":
            event["value"] = float(rng.randrange(1, 11)) / 2
        elif event_type == "purchase":
            event["value"] = round(rng.uniform(5, 200), 2)
        if n % 10 == 0:
            event["recommendation_id"] = f"rec-{n // 10}"
            event["context"] = {"page": "home", "position": n % 20}
        events.append(event)
    return events


def load_now() -> str:
    """The 1-minute load average, printed beside each figure (the machine is shared)."""
    return f"load {os.getloadavg()[0]:.1f}"


class CpuMeter:
    """CPU seconds used by a set of processes (Linux /proc) while a phase runs: the web workers
    and the PostgreSQL backends of the bench database. On a shared machine wall-clock rates move
    with everyone else's load; CPU per event moves far less."""

    def __init__(self, admin_url: str, database: str, web_parent: int | None = None) -> None:
        self.admin_url = admin_url
        self.database = database
        self.web_parent = web_parent
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _cpu(self, pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick

    def _pids(self, conn: psycopg.Connection) -> list[tuple[int, str]]:
        found = [
            (row[0], "db")
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.database],
            ).fetchall()
        ]
        if self.web_parent is not None:
            found.append((self.web_parent, "web"))
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/stat") as stat:
                            ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
                    if ppid == self.web_parent:
                        found.append((int(entry), "web"))
        return found

    def _sample(self, conn: psycopg.Connection, starting: bool) -> None:
        for pid, kind in self._pids(conn):
            cpu = self._cpu(pid)
            if cpu is None:
                continue
            if pid not in self.first:
                # A process that appears mid-phase (a new connection) counts from zero.
                self.first[pid] = (kind, cpu if starting else 0.0)
            self.last[pid] = cpu

    def _run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            self._sample(conn, starting=True)
            self.started.set()
            while not self.stop.wait(0.1):
                self._sample(conn, starting=False)
            self._sample(conn, starting=False)

    def __enter__(self) -> CpuMeter:
        if not Path("/proc/self/stat").exists():
            return self
        self.started = threading.Event()
        self.thread.start()
        self.started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop.set()
            self.thread.join(10)

    def seconds(self, kind: str) -> float:
        return sum(self.last[pid] - first for pid, (k, first) in self.first.items() if k == kind)


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


class Server:
    def __init__(self, env: dict[str, str], workers: int, threads: int) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            webserver.command(port=self.port, workers=workers, threads=threads),
            cwd=ROOT,
            env=env,
        )
        wait_until(self.healthy, 60, "the web server")

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def post_batches(port: int, key: str, bodies: list[bytes], concurrency: int) -> dict:
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "failed": 0}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            conn.request("POST", "/api/v1/events", body, headers)
            response = conn.getresponse()
            answer = orjson.loads(response.read())
            with lock:
                if response.status != 202:
                    totals["failed"] += 1
                    print("  unexpected answer:", response.status, str(answer)[:300])
                    continue
                for name in ("accepted", "duplicates", "rejected"):
                    totals[name] += answer[name]

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return totals


def single_event_latency(port: int, key: str, args: argparse.Namespace) -> list[float]:
    """Open loop: request i is due at start + i/rate; its latency counts from that moment, so a
    slow answer also delays (and is charged to) the requests queued behind it."""
    total = int(args.rate * args.latency_seconds)
    bodies = [orjson.dumps(event) for event in make_events(args, prefix="single", count=total)]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    start = time.perf_counter() + 0.5

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            due = start + index / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing to the schedule, not waiting for a result
            conn.request("POST", "/api/v1/events", bodies[index], headers)
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - due
            if response.status != 202:
                print("  unexpected answer:", response.status)
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def single_event_sequential(port: int, key: str, args: argparse.Namespace, count: int) -> list:
    """One client, one request at a time: the server's own latency, without queueing."""
    bodies = [orjson.dumps(event) for event in make_events(args, prefix="seq", count=count)]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    for body in bodies:
        started = time.perf_counter()
        conn.request("POST", "/api/v1/events", body, headers)
        conn.getresponse().read()
        latencies.append(time.perf_counter() - started)
    return sorted(latencies)


def admin_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql", path="/postgres"))


def raw_copy_rate(connection_url: str, expected: int) -> tuple[float, float]:
    """COPY the rows the HTTP run stored back into the (emptied) table, and time it."""
    columns = (
        "event_id, user_id, item_id, session_id, type, value, timestamp, ingested_at, "
        "recommendation_id, context"
    )
    with psycopg.connect(connection_url) as conn:
        blocks = []
        with conn.cursor() as cursor:
            with cursor.copy(
                f"COPY (SELECT {columns} FROM events_event) TO STDOUT (FORMAT binary)"  # noqa: S608
            ) as copy:
                for block in copy:
                    blocks.append(bytes(block))
            cursor.execute("TRUNCATE events_event")
        conn.commit()
        database = urlsplit(connection_url).path.lstrip("/")
        with CpuMeter(admin_url(connection_url), database) as meter:
            started = time.perf_counter()
            with conn.cursor() as cursor:
                with cursor.copy(
                    f"COPY events_event ({columns}) FROM STDIN (FORMAT binary)"
                ) as copy:
                    for block in blocks:
                        copy.write(block)
                cursor.execute("SELECT count(*) FROM events_event")
                copied = cursor.fetchone()[0]  # type: ignore[index]
            conn.commit()
            seconds = time.perf_counter() - started
    assert copied == expected, (copied, expected)
    return expected / seconds, meter.seconds("db") / expected * 1e6


def write_movielens_csv(path: Path, rows: int, args: argparse.Namespace) -> None:
    """MovieLens' layout and order: sorted by userId, then movieId."""
    rng = random.Random(11)
    base = int(time.time()) - 2 * 365 * 86400
    ratings = sorted(
        (rng.randrange(1, args.users), rng.randrange(1, args.items)) for _ in range(rows)
    )
    with path.open("w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        out.writelines(
            f"{user},{movie},{rng.randrange(1, 11) / 2},{base + rng.randrange(2 * 365 * 86400)}\n"
            for user, movie in ratings
        )


def main() -> None:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    url = bench_database_url()
    print(f"bench-ingest: database {urlsplit(url).path.lstrip('/')} (re-created)")
    recreate_database(url)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "recommender.settings",
        "LOG_LEVEL": "WARNING",
        "DJANGO_DEBUG": "false",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from core.catalog.services import items_upsert, users_upsert
    from core.catalog.validation import ItemIn, UserIn
    from core.events.importing import events_import
    from core.system.services import api_key_create

    call_command("migrate", verbosity=0)
    key = api_key_create(name="bench", scopes=["events:write"]).raw_key
    started = time.perf_counter()
    users_upsert(users=[UserIn(external_id=f"user-{n}") for n in range(args.users)])
    items_upsert(
        items=[
            ItemIn(external_id=f"item-{n}", title=f"Item {n}", category=f"c{n % 50}")
            for n in range(args.items)
        ]
    )
    print(
        f"catalog: {args.users:,} users and {args.items:,} items upserted in "
        f"{time.perf_counter() - started:.1f} s (catalog services)"
    )
    psql_url = urlunsplit(urlsplit(url)._replace(scheme="postgresql"))
    results: dict[str, float] = {}
    server = Server(env, args.workers, args.threads)
    try:
        if "http" not in skip:
            started = time.perf_counter()
            events = make_events(args, prefix="bench", count=args.events)
            bodies = [
                orjson.dumps(events[n : n + args.batch]) for n in range(0, len(events), args.batch)
            ]
            del events
            print(
                f"http: {len(bodies):,} bodies of {args.batch} events prepared in "
                f"{time.perf_counter() - started:.1f} s; sending with {args.concurrency} "
                f"connections to {args.workers} web workers x {args.threads} threads"
            )
            database = urlsplit(url).path.lstrip("/")
            with CpuMeter(admin_url(url), database, server.process.pid) as meter:
                started = time.perf_counter()
                totals = post_batches(server.port, key, bodies, args.concurrency)
                seconds = time.perf_counter() - started
            results["http"] = args.events / seconds
            cpu_web = meter.seconds("web") / args.events * 1e6
            cpu_db = meter.seconds("db") / args.events * 1e6
            results["http_cpu_us"] = cpu_web + cpu_db
            print(
                f"http: {args.events:,} events in {seconds:.1f} s = "
                f"{results['http']:,.0f} events/s (accepted {totals['accepted']:,}, "
                f"duplicates {totals['duplicates']:,}, rejected {totals['rejected']:,}, "
                f"failed requests {totals['failed']}; {load_now()})"
            )
            print(
                f"http: CPU per event {results['http_cpu_us']:.1f} us (web workers "
                f"{cpu_web:.1f} + PostgreSQL {cpu_db:.1f}); at that cost {os.cpu_count()} free "
                f"cores would take {(os.cpu_count() or 1) / results['http_cpu_us'] * 1e6:,.0f} "
                "events/s"
            )
            assert totals["accepted"] == args.events, "events lost or double-counted"
        if "latency" not in skip:
            sequential = single_event_sequential(server.port, key, args, 500)
            print(
                f"single event, one at a time: {len(sequential)} requests, "
                f"p50 {percentile(sequential, 0.5) * 1000:.1f} ms, "
                f"p99 {percentile(sequential, 0.99) * 1000:.1f} ms, "
                f"{len(sequential) / sum(sequential):,.0f} requests/s ({load_now()})"
            )
            database = urlsplit(url).path.lstrip("/")
            with CpuMeter(admin_url(url), database, server.process.pid) as meter:
                latencies = single_event_latency(server.port, key, args)
            results["p99_ms"] = percentile(latencies, 0.99) * 1000
            print(
                f"single event at {args.rate} req/s for {args.latency_seconds:.0f} s: "
                f"{len(latencies):,} requests, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
                f"p99 {results['p99_ms']:.1f} ms, max {latencies[-1] * 1000:.1f} ms ({load_now()})"
            )
            web_ms = meter.seconds("web") / len(latencies) * 1000
            db_ms = meter.seconds("db") / len(latencies) * 1000
            print(
                f"single event: CPU per request {web_ms + db_ms:.2f} ms (web workers "
                f"{web_ms:.2f} + PostgreSQL {db_ms:.2f}): {args.rate} requests/s need "
                f"{args.rate * (web_ms + db_ms) / 1000:.2f} of the {os.cpu_count()} cores"
            )
    finally:
        server.stop()
    if "http" not in skip and "copy" not in skip:
        with psycopg.connect(psql_url) as conn:
            stored = conn.execute("SELECT count(*) FROM events_event").fetchone()[0]  # type: ignore[index]
        results["copy"], results["copy_cpu_us"] = raw_copy_rate(psql_url, stored)
        print(
            f"raw COPY of the same {stored:,} rows into events_event: {results['copy']:,.0f} "
            f"events/s; http/COPY ratio {results['http'] / results['copy']:.2f} (goal >= 0.15; "
            f"{load_now()})"
        )
        if results["copy_cpu_us"] and results.get("http_cpu_us"):
            print(
                f"raw COPY: CPU per event {results['copy_cpu_us']:.1f} us (PostgreSQL); "
                f"COPY/http CPU per event {results['copy_cpu_us'] / results['http_cpu_us']:.2f} "
                "(the ratio with the machine's other load taken out)"
            )
    if "import" not in skip and args.import_events:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "ratings.csv"
            write_movielens_csv(path, args.import_events, args)
            report = events_import(path=path)
            results["import"] = report.rate
            print(
                f"import_events (MovieLens ratings.csv layout, {report.read:,} rows): "
                f"{report.rate:,.0f} events/s (accepted {report.accepted:,}, duplicates "
                f"{report.duplicates:,}, rejected {report.rejected:,}) via {report.path} "
                f"({load_now()})"
            )
    load = os.getloadavg()
    print("summary:", ", ".join(f"{name}={value:,.1f}" for name, value in results.items()))
    print(f"machine: {os.cpu_count()} cores, load average at the end {load[0]:.1f} {load[1]:.1f}")


if __name__ == "__main__":
    main()
