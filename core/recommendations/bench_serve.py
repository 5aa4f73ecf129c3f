"""`make bench-serve`: the recommendations endpoint under fixed request rates, on the real stack.

    python -m core.recommendations.bench_serve [--items 10000] [--dim 64] [--seconds 20] [--json]

It builds a dedicated database (BENCH_DATABASE_URL, default `recommender_bench_serve` on the
local PostgreSQL; its name must contain "bench", it is flushed) and starts a redis-server of its
own on a free port (or uses BENCH_REDIS_URL, flushed): 10,000 items, 2,000 shoppers with
histories computed by the feature pipeline, a 64-d contract model (`ml.serving.contract_model`)
served by the local model server, and the web server (`core.system.webserver`: granian) with 2
workers of 1 Python thread each by default (one request at a time per process measured best on
two cores: no GIL contention between a process's threads; `make demo` and docker-compose run
2 x 4, which keeps more requests in flight when a backend is slow; `--threads 4` measures that).
Then, open loop from one client thread (each request has a fixed send time; latency counts from
that time, so a server that falls behind is charged for the queue), loopback only, bounded in
count and time:

- uncached: `GET /api/v1/users/{id}/recommendations?count=10&session_items=<one item>` at
  150 requests/s, each (shopper, session item) pair new, so every request asks the model;
- cached: `GET /api/v1/users/{id}/recommendations?count=10` for 200 shoppers whose answers were
  warmed up, at 600 requests/s (the model's answer comes from Redis);
- both again at a light 20 requests/s first, which separates what one request costs from
  queueing when the machine cannot keep up with the target rate;
- a direct gRPC Predict (`PredictionClient.recommend`, the same histories and depth) to the same
  model server at 150 requests/s, and the endpoint's cost as a ratio of it.

It prints p50/p99 per phase, each phase's `source` mix, the web workers' RSS after all the
requests, and the machine's load average (the machine is shared: read figures beside it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from core.system import webserver

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/recommender_bench_serve"
# Used only where redis-server is not on the PATH (the bench starts a Redis of its own).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
SHOPPERS = 2000
EVENTS_PER_SHOPPER = 8
CACHED_PAIRS = 200
COUNT = 10
# The gRPC phase's sending threads (the client blocks); the HTTP phases use one thread and up to
# CLIENT_CONNECTIONS keep-alive sockets.
CLIENT_THREADS = 48
CLIENT_CONNECTIONS = 64
# A request still unsent this long after its time is dropped (counted as status -1).
GIVE_UP_SECONDS = 5.0
# A request sent but unanswered this long fails (status 0).
RESPONSE_TIMEOUT_SECONDS = 30.0
# Issue 7's targets: (p50, p99) in ms.
TARGETS = {"uncached": (6.0, 20.0), "cached": (2.0, 10.0)}


def say(message: str) -> None:
    print(f"[bench-serve] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


# --- the stack ---------------------------------------------------------------------------------


def prepare_database(database_url: str, redis_url: str, items: int) -> tuple[str, dict]:
    """Migrate and fill the bench database; returns an API key and each shopper's history."""
    import django

    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command

    from core.catalog.models import Item
    from core.events.importing import events_load
    from core.features.services import features_neighbours_refresh, features_refresh
    from core.system.services import api_key_create

    say("migrating and flushing the bench database")
    call_command("migrate", interactive=False, verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    cache.clear()
    import redis

    redis.Redis.from_url(redis_url).flushdb()

    now = datetime.now(UTC)
    categories = [f"dept-{d}/aisle-{a}" for d in range(10) for a in range(5)]
    Item.objects.bulk_create(
        (
            Item(
                external_id=f"item-{i}", title=f"Item {i}", category=categories[i % 50],
                created_at=now, updated_at=now,
            )
            for i in range(items)
        ),
        batch_size=5000,
    )  # fmt: skip
    rng = random.Random(7)
    histories: dict[str, list[str]] = {}
    events = []
    start = now - timedelta(days=3)
    for shopper in range(SHOPPERS):
        user_id = f"shopper-{shopper}"
        seen = [f"item-{rng.randrange(items)}" for _ in range(EVENTS_PER_SHOPPER)]
        histories[user_id] = seen
        for n, item_id in enumerate(seen):
            kind = "purchase" if n == EVENTS_PER_SHOPPER - 1 else rng.choice(["view", "click"])
            at = start + timedelta(minutes=shopper + n)
            events.append(
                {"user_id": user_id, "item_id": item_id, "type": kind, "timestamp": at.isoformat()}
            )
    say(f"loading {len(events)} events for {SHOPPERS} shoppers and computing their features")
    events_load(events=events)
    features_refresh(trigger="bench", budget=120)
    features_neighbours_refresh(trigger="bench", budget=120)
    from core.features.services import features_catalog_sync
    from core.recommendations import sources

    features_catalog_sync(full=True)  # the hot set of unavailable items, as the sweep makes it
    if not sources.shopper(f"shopper-{SHOPPERS - 1}").history:
        raise SystemExit("the feature pipeline left the last shopper without a history")
    key = api_key_create(name="bench-serve", scopes=["recommendations:read"]).raw_key
    return key, histories


@dataclass
class Stack:
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as handle:
            self.processes[name] = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def start_redis(self, workdir: Path) -> str:
        """A Redis of the run's own (no other process on this shared machine flushes it)."""
        server = shutil.which("redis-server")
        if server is None:
            return DEFAULT_REDIS_URL
        port = free_port()
        self.start(
            "redis",
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", str(workdir)],
            dict(os.environ), workdir / "redis.log",
        )  # fmt: skip
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):  # not a group leader
                    process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_answers(host: str, port: int, path: str, stack: Stack, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with code {process.returncode}")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"http://{host}:{port}{path} did not answer within {seconds:.0f} s")


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    rate: float
    latencies_ms: list[float]
    statuses: Counter
    sources: Counter
    late_starts: int  # requests sent over 1 ms after their time: the client itself fell behind
    client_cpu_ms: float  # this (load-generating) process's CPU time per request
    seconds: float  # from the first scheduled send to the last answer
    server_cpu_ms: dict[str, float] = field(default_factory=dict)  # per part, per request

    def row(self) -> dict:
        ok = self.latencies_ms

        def ms(value: float) -> float | str:
            return round(value, 2) if value != float("inf") else "not answered"

        return {
            "phase": self.name,
            "rate": self.rate,
            "requests": sum(self.statuses.values()),
            "p50_ms": ms(percentile(ok, 0.50)) if ok else None,
            "p90_ms": ms(percentile(ok, 0.90)) if ok else None,
            "p99_ms": ms(percentile(ok, 0.99)) if ok else None,
            "max_ms": ms(max(ok)) if ok else None,
            "answered_per_second": round(self.statuses.get(200, 0) / self.seconds, 1),
            "statuses": dict(self.statuses),
            "sources": dict(self.sources),
            "late_client_starts": self.late_starts,
            "client_cpu_ms_per_request": round(self.client_cpu_ms, 3),
            "server_cpu_ms_per_request": {k: round(v, 3) for k, v in self.server_cpu_ms.items()},
        }


def open_loop(
    name: str,
    rate: float,
    jobs: list,
    make_caller: Callable[[], Callable[[object], tuple[int, str]]],
) -> Phase:
    """Call `make_caller()`'s function on `jobs` at `rate` per second on a fixed schedule, from a
    pool of threads (for a client that blocks, such as gRPC's); each call's latency runs from its
    scheduled time to its answer. A request not sent within
    GIVE_UP_SECONDS of its time is dropped and counted (status -1): the run stays bounded when the
    server cannot keep up."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    start = time.perf_counter() + 0.5
    cpu_before = time.process_time()
    for index, job in enumerate(jobs):
        work.put((start + index / rate, job))
    results: list[tuple[float, int, str, bool]] = []
    lock = threading.Lock()

    def worker() -> None:
        call = make_caller()
        local = []
        while True:
            try:
                scheduled, job = work.get_nowait()
            except queue.Empty:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            behind = time.perf_counter() - scheduled
            if behind > GIVE_UP_SECONDS:
                local.append((behind * 1000, -1, "", True))
                continue
            late = behind > 0.001
            status, source = call(job)
            local.append(((time.perf_counter() - scheduled) * 1000, status, source, late))
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=len(jobs) / rate + 120)
    return _phase(name, rate, results, start, cpu_before)


def _phase(
    name: str,
    rate: float,
    results: list[tuple[float, int, str, bool]],
    start: float,
    cpu_before: float,
) -> Phase:
    """A phase's figures from its (latency ms, status, source, sent late) results."""
    elapsed = max(time.perf_counter() - start, 1e-9)
    client_cpu = time.process_time() - cpu_before
    return Phase(
        name=name,
        rate=rate,
        # a failed or dropped request counts as never answered: it can only raise the percentiles
        latencies_ms=[
            latency if status == 200 else float("inf") for latency, status, _, _ in results
        ],
        statuses=Counter(status for _, status, _, _ in results),
        sources=Counter(source for _, status, source, _ in results if status == 200),
        late_starts=sum(1 for *_, late in results if late),
        client_cpu_ms=client_cpu * 1000 / max(1, len(results)),
        seconds=elapsed,
    )


@dataclass
class _Connection:
    sock: socket.socket
    buffer: bytes = b""
    scheduled: float = 0.0  # the current request's send time, by the schedule
    late: bool = False  # the current request went out over 1 ms after its time


def _http_answer(buffer: bytes) -> tuple[int, bytes, bool] | None:
    """(status, body, whether the server closes) once `buffer` holds a whole response (one
    request at a time per connection: nothing follows it)."""
    header, found, rest = buffer.partition(b"\r\n\r\n")
    if not found:
        return None
    lines = header.split(b"\r\n")
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines[1:])
    }
    length = int(fields[b"content-length"])
    if len(rest) < length:
        return None
    status = int(lines[0].split(b" ", 2)[1])
    closes = fields.get(b"connection", b"").lower() == b"close"
    return status, rest[:length], closes


def http_open_loop(name: str, rate: float, paths: list[str], port: int, key: str) -> Phase:
    """GET `paths` at `rate` per second on a fixed schedule, from one thread: a select() loop over
    up to CLIENT_CONNECTIONS keep-alive sockets (a new one whenever none is free). Each latency runs
    from the request's scheduled time to the last byte of its answer, so a server that falls
    behind is charged for the queue. One thread means no hand-offs between the client's threads:
    with a thread per request in flight, the client's own scheduling on the same two cores added
    up to tens of milliseconds to the p99 of a server that answers a constant body (see
    docs/storefront-and-serving-bench.md). A request still unsent GIVE_UP_SECONDS after its time
    is dropped (status -1); one unanswered for RESPONSE_TIMEOUT_SECONDS fails (status 0)."""
    head = f" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    start = time.perf_counter() + 0.5
    cpu_before = time.process_time()
    idle: list[_Connection] = []
    busy: dict[int, _Connection] = {}
    due: deque[tuple[float, str]] = deque()
    results: list[tuple[float, int, str, bool]] = []
    sent = 0

    def fail(connection: _Connection, status: int) -> None:
        connection.sock.close()
        results.append((float("inf"), status, "", False))

    while sent < len(paths) or due or busy:
        now = time.perf_counter()
        while sent < len(paths) and start + sent / rate <= now:
            due.append((start + sent / rate, paths[sent]))
            sent += 1
        while due and (idle or len(busy) < CLIENT_CONNECTIONS):
            scheduled, path = due.popleft()
            if now - scheduled > GIVE_UP_SECONDS:
                results.append(((now - scheduled) * 1000, -1, "", True))
                continue
            if idle:
                connection = idle.pop()
            else:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                except OSError:
                    results.append((float("inf"), 0, "", False))
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection = _Connection(sock)
            connection.scheduled = scheduled
            try:
                connection.sock.sendall(b"GET " + path.encode() + head)
            except OSError:
                fail(connection, 0)
                continue
            connection.buffer, connection.late = b"", time.perf_counter() - scheduled > 0.001
            busy[connection.sock.fileno()] = connection
        if sent < len(paths) and not due:
            timeout = max(0.0, start + sent / rate - time.perf_counter())
        else:
            timeout = 0.05
        if not busy:
            time.sleep(timeout)
            continue
        readable, _, _ = select.select(list(busy), [], [], timeout)
        now = time.perf_counter()
        for fd in readable:
            connection = busy[fd]
            try:
                chunk = connection.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                del busy[fd]
                fail(connection, 0)
                continue
            connection.buffer += chunk
            answer = _http_answer(connection.buffer)
            if answer is None:
                continue
            del busy[fd]
            status, body, closes = answer
            source = json.loads(body).get("source", "") if status == 200 else ""
            results.append(((now - connection.scheduled) * 1000, status, source, connection.late))
            if closes:
                connection.sock.close()
            else:
                connection.buffer = b""
                idle.append(connection)
        for fd, connection in list(busy.items()):
            if now - connection.scheduled > RESPONSE_TIMEOUT_SECONDS:
                del busy[fd]
                fail(connection, 0)
    for connection in idle:
        connection.sock.close()
    return _phase(name, rate, results, start, cpu_before)


def grpc_caller(target: str, k: int) -> Callable[[], Callable[[object], tuple[int, str]]]:
    from ml.serving.client import PredictionClient

    client = PredictionClient(target, model_name="recommender", timeout=5.0)

    def make() -> Callable[[object], tuple[int, str]]:
        def call(history: object) -> tuple[int, str]:
            try:
                client.recommend(list(history), k=k)  # type: ignore[arg-type,call-overload]
            except Exception:
                return 0, ""
            return 200, "grpc"

        return call

    return make


def recommendations_path(user_id: str, session_item: str | None) -> str:
    path = f"/api/v1/users/{user_id}/recommendations?count={COUNT}"
    return path + (f"&session_items={session_item}" if session_item else "")


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--uncached-rate", type=float, default=150.0)
    parser.add_argument("--cached-rate", type=float, default=600.0)
    parser.add_argument("--light-rate", type=float, default=20.0, help="the light phases' rate")
    parser.add_argument("--light-seconds", type=float, default=10.0)
    parser.add_argument(
        "--workers", type=webserver.count, default=2, help="web server worker processes"
    )
    parser.add_argument(
        "--threads", type=webserver.count, default=1, help="Python threads per web worker"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 120 and 1 <= args.light_seconds <= 120):
        parser.error("--seconds and --light-seconds must be from 1 to 120 (the run is bounded)")

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("BENCH_REDIS_URL")
    if "bench" not in urlparse(database_url).path:
        raise SystemExit(
            "BENCH_DATABASE_URL must name a database with 'bench' in it (it is flushed)"
        )
    for url in (database_url, redis_url or "redis://127.0.0.1"):
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"{url}: the bench runs on this machine's loopback only")
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    stack = Stack()
    # SIGTERM (a timeout, a supervisor) still stops every process this run started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if redis_url is None:
            redis_url = stack.start_redis(workdir)
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "ensure_services.py"), database_url,
             redis_url],
            check=True, stdout=sys.stderr,
        )  # fmt: skip
        _create_database(database_url)
        return _run(args, stack, workdir, database_url, redis_url)
    finally:
        stack.stop()


def _run(args, stack: Stack, workdir: Path, database_url: str, redis_url: str) -> int:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "recommender.settings",
        "DJANGO_ENV": "development",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RECOMMENDER_VAR_DIR": str(workdir / "var"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
    }
    os.environ.update(env)
    started = time.monotonic()
    load_before = load_average()
    key, histories = prepare_database(database_url, redis_url, args.items)
    if not _feature_store_intact():
        raise SystemExit("the feature pipeline did not publish to the feature store's Redis")

    from ml.serving.bench_client import start_model_server

    say(f"exporting a {args.items}-item {args.dim}-d contract model and starting the model server")
    model_server, target = start_model_server(workdir, args.items, args.dim)
    stack.processes["model-server"] = model_server
    port = free_port()
    env["MODEL_SERVER_TARGET"] = target
    stack.start(
        "web",
        webserver.command(port=port, workers=args.workers, threads=args.threads),
        env,
        workdir / "web.log",
    )
    wait_until_answers("127.0.0.1", port, "/healthz", stack, 60)
    say(f"granian on 127.0.0.1:{port}, model server on {target}; load {load_average()}")
    return _measure(args, port, key, histories, target, stack, started, load_before)


def _create_database(database_url: str) -> None:
    import psycopg

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def _measure(args, port, key, histories, target, stack, started, load_before) -> int:
    rng = random.Random(11)
    users = list(histories)
    served = 0

    parts = {
        "web": child_pids(stack.processes["web"].pid),
        "model server": [stack.processes["model-server"].pid],
        "redis": [stack.processes["redis"].pid] if "redis" in stack.processes else [],
    }

    def run(name: str, rate: float, paths: list[str]) -> Phase:
        nonlocal served
        say(f"{name}: {len(paths)} requests at {rate:g}/s")
        served += len(paths)
        before = {part: cpu_seconds(pids) for part, pids in parts.items()}
        phase = http_open_loop(name, rate, paths, port, key)
        phase.server_cpu_ms = {
            part: (cpu_seconds(pids) - before[part]) * 1000 / max(1, len(paths))
            for part, pids in parts.items()
            if pids
        }
        return phase

    # Warm every worker's connections and code paths (session items below 300: unused later).
    run("warm-up", 30, [recommendations_path(rng.choice(users), f"item-{i}") for i in range(150)])

    light_count = int(args.light_rate * args.light_seconds)
    uncached_count = int(args.uncached_rate * args.seconds)
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < light_count + uncached_count:
        pairs.add((rng.choice(users), f"item-{rng.randrange(300, args.items)}"))
    fresh = [recommendations_path(user, item) for user, item in sorted(pairs)]
    rng.shuffle(fresh)
    cached_paths = [recommendations_path(user, None) for user in users[:CACHED_PAIRS]]
    run("cache fill", 40, cached_paths)

    def repeat(count: int) -> list[str]:
        return [cached_paths[i % CACHED_PAIRS] for i in range(count)]

    phases = [
        run("uncached, light", args.light_rate, fresh[:light_count]),
        run("cached, light", args.light_rate, repeat(light_count)),
        run("uncached", args.uncached_rate, fresh[light_count:]),
        run("cached", args.cached_rate, repeat(int(args.cached_rate * args.seconds))),
    ]

    # The model call the endpoint makes: the shopper's history plus the session item, as deep as
    # the stored list (RECOMMENDATIONS_LIST_LENGTH) plus what the filters may drop.
    from django.conf import settings

    depth = settings.RECOMMENDATIONS_LIST_LENGTH + EVENTS_PER_SHOPPER + 1
    grpc_jobs = [
        histories[user] + [f"item-{rng.randrange(args.items)}"]
        for user in (rng.choice(users) for _ in range(uncached_count))
    ]
    say(f"direct gRPC Predict: {len(grpc_jobs)} calls at {args.uncached_rate:g}/s")
    open_loop("grpc warm-up", 100, grpc_jobs[:200], grpc_caller(target, depth))
    grpc = open_loop("grpc Predict", args.uncached_rate, grpc_jobs, grpc_caller(target, depth))
    phases.append(grpc)
    uncached = phases[2]

    feature_store_intact = _feature_store_intact()
    if not feature_store_intact:
        say(
            "the feature store's Redis lost its data during the run (another process flushed "
            "the database?): shoppers' histories and neighbours were read from PostgreSQL"
        )
    web_pid = stack.processes["web"].pid
    workers = child_pids(web_pid)
    report = {
        "items": args.items,
        "dim": args.dim,
        "web_server": f"granian, {args.workers} workers x {args.threads} threads",
        "phases": [phase.row() for phase in phases],
        "ratio_uncached_p50_to_grpc_p50": _ratio(uncached, grpc, 0.5),
        "ratio_uncached_p99_to_grpc_p99": _ratio(uncached, grpc, 0.99),
        "requests_served_by_web_server": served,
        "feature_store_intact": feature_store_intact,
        "worker_rss_mb": [round(rss_mb(pid), 1) for pid in workers],
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cores": os.cpu_count(),
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def _feature_store_intact() -> bool:
    from core.features import hotstore

    store = hotstore.client("job")
    if store is None:
        return False
    consumers = ("activity", "items", "neighbours")
    return all(store.exists(hotstore.marker_key(name)) for name in consumers)


def _ratio(endpoint: Phase, grpc: Phase, q: float) -> float | None:
    if not endpoint.latencies_ms or not grpc.latencies_ms:
        return None
    ratio = percentile(endpoint.latencies_ms, q) / percentile(grpc.latencies_ms, q)
    return round(ratio, 2) if ratio != float("inf") else None


def print_report(report: dict) -> None:
    print(
        f"\nRecommendations endpoint, {report['items']:,} items, {report['dim']}-d model, "
        f"{report['web_server']}, {report['cores']} cores\n"
    )
    print(
        "| phase | rate/s | requests | answered/s | p50 ms | p99 ms | target p50/p99 | sources "
        "| CPU ms/req: web, model server, redis, client | late client sends |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---|---:|")
    for row in report["phases"]:
        target = TARGETS.get(row["phase"])
        target_text = f"<= {target[0]:g} / <= {target[1]:g}" if target else ""
        sources = ", ".join(f"{k} {v}" for k, v in sorted(row["sources"].items()))
        failed = {
            ("dropped, the client gave up" if k == -1 else k): v
            for k, v in row["statuses"].items()
            if k != 200
        }
        sources += f"; non-200: {failed}" if failed else ""
        server = row["server_cpu_ms_per_request"]
        cpu = ", ".join(
            [f"{server[part]:.2f}" if part in server else "-" for part in ("web", "model server",
             "redis")] + [f"{row['client_cpu_ms_per_request']:.2f}"]
        )  # fmt: skip
        print(
            f"| {row['phase']} | {row['rate']:.0f} | {row['requests']} | "
            f"{row['answered_per_second']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {target_text} | {sources} | "
            f"{cpu} | {row['late_client_starts']} |"
        )
    p50_ratio = report["ratio_uncached_p50_to_grpc_p50"]
    p99_ratio = report["ratio_uncached_p99_to_grpc_p99"]
    print(f"\nuncached endpoint / direct gRPC Predict: p50 x{p50_ratio}, p99 x{p99_ratio}")
    print(
        f"web worker RSS after {report['requests_served_by_web_server']:,} requests: "
        f"{', '.join(f'{mb} MB' for mb in report['worker_rss_mb'])}"
    )
    if not report["feature_store_intact"]:
        print("WARNING: the feature store's Redis lost its data during the run (see above)")
    print(
        f"load average before {report['load_average_before']}, after "
        f"{report['load_average_after']}; {report['seconds']} s in all"
    )


if __name__ == "__main__":
    sys.exit(main())
