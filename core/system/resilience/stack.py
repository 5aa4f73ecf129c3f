"""A private copy of the whole backend on this machine, each part restartable on its own.

`PrivateStack` makes a temporary folder and starts in it, on free loopback ports:

- a PostgreSQL cluster of its own (`initdb`, trust auth; as the `postgres` user when run as root,
  since PostgreSQL refuses to run as root),
- two redis-servers: one for the cache and the hot feature store (`REDIS_URL`), one for the
  Celery broker (`CELERY_BROKER_URL`), so "cache down" and "broker down" are distinct faults;
  neither persists (a restarted Redis comes back empty, the harder case),
- the local model server over a model trained by `manage.py train_model --small` on the
  synthetic storefront (`manage.py load_demo_storefront --small`), exported into a model
  repository that is a small tmpfs of its own when the run may mount one (root), so the disk can
  really be filled,
- the web server (granian, 2 workers x 4 threads, as `make demo`), a Celery worker and beat.

It never touches the shared PostgreSQL or Redis of the machine, and stops only what it started
(by process group), then removes its folder.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.recommendations.bench_serve import free_port
from core.system import webserver

ROOT = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
MODEL_NAME = "recommender"
# The model repository's tmpfs: the small model is under 1 MB; room for a few versions.
MODEL_REPOSITORY_MB = 32


def say(message: str) -> None:
    print(f"[stack {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: install PostgreSQL's server binaries")
    return path


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll `check` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with contextlib.suppress(Exception):  # a part still starting fails in every way
            if check():
                return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"{what} did not happen within {seconds:.0f} s")


def http_get(port: int, path: str, key: str | None = None, timeout: float = 5) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body or b"{}")
        except ValueError:
            return response.status, {"text": body.decode(errors="replace")}
    finally:
        connection.close()


@dataclass
class Part:
    """One long-running process, started again with the same command when restarted."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 20) -> None:
        if self.process is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """kill -9 of the process and its children (a container OOM-killed, a node lost)."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class PrivateStack:
    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="recommender-stack-"))
    )
    parts: dict[str, Part] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    api_key: str = ""
    model_repository_is_tmpfs: bool = False
    keep_logs: Path | None = None  # copy every part's log here when the stack stops
    _pg_as: list[str] = field(default_factory=list)

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> PrivateStack:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        started = time.monotonic()
        self.workdir.chmod(0o755)
        for name in ("postgres", "redis", "broker", "grpc", "rest", "web"):
            self.ports[name] = free_port()
        self._start_postgres()
        self._start_redis("redis")
        self._start_redis("broker")
        self._mount_model_repository()
        var = self.workdir / "var"
        metrics = self.workdir / "prometheus"
        metrics.mkdir()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "recommender.settings",
            "DJANGO_ENV": "development",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.ports['postgres']}/recommender",
            "REDIS_URL": f"redis://127.0.0.1:{self.ports['redis']}/0",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.ports['broker']}/0",
            "MODEL_SERVER_TARGET": f"127.0.0.1:{self.ports['grpc']}",
            "MODEL_SERVER_REST_PORT": str(self.ports["rest"]),
            "MODEL_REPOSITORY": str(self.model_repository),
            "MODEL_NAME": MODEL_NAME,
            "RECOMMENDER_VAR_DIR": str(var),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            # The load is one client; its own limits are not under test here.
            "API_RATE_LIMITS": "*=off",
            # Beat's daily training stays out of the measured minutes.
            "MODEL_TRAIN_HOUR": "-1",
        }
        for name in ("CELERY_RESULT_BACKEND", "FEATURES_REDIS_URL", "DATABASE_CONN_MAX_AGE"):
            self.env.pop(name, None)
        self._prepare_data()
        self._add_part(
            "model-server",
            [PYTHON, "-m", "ml.serving.server", f"--port={self.ports['grpc']}",
             f"--rest_api_port={self.ports['rest']}", "--host=127.0.0.1",
             f"--model_name={MODEL_NAME}",
             f"--model_base_path={self.model_repository / MODEL_NAME}",
             "--file_system_poll_wait_seconds=1"],
        )  # fmt: skip
        self._add_part(
            "worker",
            [PYTHON, "-m", "celery", "-A", "recommender", "worker", "--loglevel=WARNING",
             "--concurrency=2", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        )  # fmt: skip
        self._add_part(
            "beat",
            [PYTHON, "-m", "celery", "-A", "recommender", "beat", "--loglevel=WARNING",
             f"--schedule={self.workdir / 'celerybeat-schedule'}"],
        )  # fmt: skip
        self._add_part(
            "web", webserver.command(port=self.ports["web"], workers=2, threads=4, python=PYTHON)
        )
        for name in ("model-server", "worker", "beat", "web"):
            self.parts[name].start()
        self.wait_ready(180)
        say(f"stack ready in {time.monotonic() - started:.0f} s (folder {self.workdir})")

    def close(self) -> None:
        for part in reversed(list(self.parts.values())):
            part.stop()
        if (self.workdir / "pg" / "PG_VERSION").exists():
            self.postgres_ctl("stop", check=False)
        for name in ("redis", "broker"):
            self.redis_stop(name)
        if self.model_repository_is_tmpfs:
            subprocess.run(["umount", "-l", str(self.model_repository)], check=False)
        if self.keep_logs is not None:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in [*self.workdir.glob("*.log"), self.workdir / "pg" / "server.log"]:
                if log.exists():
                    shutil.copy(log, self.keep_logs / log.name)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- parts ---------------------------------------------------------------------------------

    def _add_part(self, name: str, args: list[str]) -> None:
        self.parts[name] = Part(name, args, self.env, self.workdir / f"{name}.log")

    def restart(self, name: str) -> None:
        self.parts[name].start()

    def _start_postgres(self) -> None:
        data = self.workdir / "pg"
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user.
            data.mkdir()
            shutil.chown(data, "postgres", "postgres")
            self._pg_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self._pg_as, _postgres_bin("initdb"), "-D", str(data), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.postgres_ctl("start")
        subprocess.run(
            [_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]),
             "-U", "postgres", "recommender"],
            check=True,
        )  # fmt: skip

    def postgres_ctl(self, action: str, check: bool = True) -> None:
        data = self.workdir / "pg"
        options = (
            f"-p {self.ports['postgres']} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={data} -c max_connections=200"
        )
        args = [*self._pg_as, _postgres_bin("pg_ctl"), "-D", str(data), "-w", "-t", "60"]
        if action == "start":
            args += ["-o", options, "-l", str(data / "server.log"), "start"]
        else:
            args += ["-m", "fast", action]
        subprocess.run(args, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def postgres_pid(self) -> int | None:
        pidfile = self.workdir / "pg" / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _start_redis(self, name: str) -> None:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        part = Part(
            name,
            [shutil.which("redis-server") or "redis-server", "--port", str(self.ports[name]),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            dict(os.environ), self.workdir / f"{name}.log",
        )  # fmt: skip
        part.start()
        self.parts[name] = part
        wait_for(lambda: self._redis_ping(name), 20, f"redis {name} answering")

    def _redis_ping(self, name: str) -> bool:
        import redis

        client = redis.Redis(port=self.ports[name], socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def redis_stop(self, name: str) -> None:
        if name in self.parts:
            self.parts[name].stop()

    def redis_start(self, name: str) -> None:
        self.parts[name].start()
        wait_for(lambda: self._redis_ping(name), 20, f"redis {name} answering")

    @property
    def model_repository(self) -> Path:
        return self.workdir / "models"

    def _mount_model_repository(self) -> None:
        self.model_repository.mkdir()
        if os.geteuid() != 0:
            return
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={MODEL_REPOSITORY_MB}m,mode=0755", "tmpfs",
             str(self.model_repository)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.model_repository_is_tmpfs = mounted.returncode == 0

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, text=True,
            capture_output=True,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def _prepare_data(self) -> None:
        say("migrating, loading the small synthetic storefront, features, first model")
        self.manage("migrate", "--noinput", "--verbosity", "0")
        self.api_key = self.manage(
            "create_api_key", "--name", "resilience", "--quiet", "--scopes", "admin"
        ).strip()
        self.manage("load_demo_storefront", "--small")
        self.manage("run_features")
        self.manage("train_model", "--small")

    # --- state ---------------------------------------------------------------------------------

    def sql(self, query: str, params: list | None = None) -> list[tuple]:
        import psycopg

        url = self.env["DATABASE_URL"]
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as connection:
            return list(connection.execute(query, params or []).fetchall())  # type: ignore[arg-type]

    def readyz(self) -> tuple[int, dict]:
        return http_get(self.ports["web"], "/readyz", timeout=5)

    def wait_ready(self, seconds: float) -> float:
        def ready() -> bool:
            for part in self.parts.values():
                if part.process is not None and part.process.poll() is not None:
                    log = part.log.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{part.name} exited ({part.process.returncode}):\n{log}")
            return self.readyz()[0] == 200

        return wait_for(ready, seconds, "/readyz answering 200")

    def metrics_text(self) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.ports["web"], timeout=5)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def process_rss_mb(self) -> dict[str, float]:
        """Resident memory of each long-running Python process of the stack, children included
        (the web server's and Celery's worker processes are where requests and tasks run)."""
        from core.recommendations.bench_serve import child_pids, rss_mb

        sizes: dict[str, float] = {}
        for name in ("web", "worker", "model-server"):
            part = self.parts[name]
            if not part.alive():
                continue
            children = child_pids(part.pid)
            if name == "web":
                for index, child in enumerate(sorted(children)):
                    sizes[f"web worker {index + 1}"] = rss_mb(child)
            else:
                sizes[name] = rss_mb(part.pid) + sum(rss_mb(child) for child in children)
        return sizes
