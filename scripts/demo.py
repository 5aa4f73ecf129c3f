#!/usr/bin/env python
"""`make demo`: the whole backend on one machine, from a fresh clone.

Migrates, loads a synthetic storefront, computes features, trains and exports a first model,
starts the model server, a Celery worker and beat, and the web server; prints the URLs, an admin
login and two curl commands. Ctrl-C stops every process it started.

With no environment set everything is embedded (SQLite, filesystem broker, the project's own
TF-Serving-compatible model server). Set DATABASE_URL / REDIS_URL to use PostgreSQL and Redis.

`--check` runs the same thing, calls the printed commands itself, and exits 0 when they answer
(the test suite runs it with `--small` on free ports).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.system import webserver

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


@dataclass
class Supervisor:
    """Starts long-running processes in their own process groups and stops them all."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(
        self, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            args, cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes[name] = process
        say(f"started {name} (pid {process.pid}, log {self.log_dir / f'{name}.log'})")
        return process

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} exited with code {process.returncode}:\n{log}")

    def stop_all(self) -> None:
        for name, process in reversed(self.processes.items()):
            if process.poll() is None:
                say(f"stopping {name}")
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE if capture else None,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit {result.returncode})")
    return result.stdout or ""


def available_commands(env: dict[str, str]) -> set[str]:
    code = "from django.core.management import get_commands; print(' '.join(get_commands()))"
    out = subprocess.run(
        [PYTHON, "-c", f"import django; django.setup(); {code}"], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(out.split())


def wait_for_http(url: str, supervisor: Supervisor, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    last = ""
    while time.monotonic() < deadline:
        supervisor.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (local URL)
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:500]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s: {last}")


def call(method: str, url: str, key: str, body: object | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (local URL)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run the curl commands and exit")
    parser.add_argument("--small", action="store_true", help="a small storefront (fast)")
    parser.add_argument("--web-port", type=int, default=int(os.environ.get("DEMO_WEB_PORT", 8000)))
    parser.add_argument(
        "--model-port", type=int, default=int(os.environ.get("DEMO_GRPC_PORT", 8500))
    )
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "recommender.settings")
    env.setdefault("DJANGO_ENV", "development")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    var_dir = Path(env.setdefault("RECOMMENDER_VAR_DIR", str(ROOT / "var"))).resolve()
    log_dir = var_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    web_port, model_port = args.web_port, args.model_port
    if args.check:
        web_port, model_port = free_port(), free_port()
    rest_port = free_port() if args.check else model_port + 1
    for port in (web_port, model_port):
        if not port_is_free(port):
            raise SystemExit(
                f"port {port} is taken: stop what uses it or choose others with "
                "DEMO_WEB_PORT / DEMO_GRPC_PORT"
            )
    env["MODEL_SERVER_TARGET"] = f"127.0.0.1:{model_port}"
    env["MODEL_SERVER_REST_PORT"] = str(rest_port)
    model_repository = Path(env.setdefault("MODEL_REPOSITORY", str(var_dir / "models")))
    model_name = env.setdefault("MODEL_NAME", "recommender")
    base_url = f"http://127.0.0.1:{web_port}"

    say(f"state in {var_dir} (database: {env.get('DATABASE_URL', 'SQLite, embedded')})")
    manage(env, "migrate", "--noinput", "--verbosity", "0")
    commands = available_commands(env)

    admin_password = secrets.token_urlsafe(9)
    manage(env, "ensure_superuser", "--username", "admin", "--password", admin_password)
    api_key = manage(
        env, "create_api_key", "--name", "demo storefront", "--quiet",
        "--scopes", "events:write", "recommendations:read", "catalog:write",
        capture=True,
    ).strip()  # fmt: skip
    # The storefront page (/demo/) hands its key to every browser: one with only these scopes.
    if not env.get("DEMO_PAGE_API_KEY"):
        env["DEMO_PAGE_API_KEY"] = manage(
            env, "create_api_key", "--name", "demo page", "--quiet",
            "--scopes", "events:write", "recommendations:read",
            capture=True,
        ).strip()  # fmt: skip

    size = ["--small"] if args.small else []
    if "load_demo_storefront" in commands:
        manage(env, "load_demo_storefront", *size)
    else:
        say("skipped loading a storefront: ingestion is not built yet")
    if "run_features" in commands:
        manage(env, "run_features")
    else:
        say("skipped the feature batch: the feature pipeline is not built yet")
    if "train_model" in commands:
        manage(env, "train_model", *size)
    else:
        say("skipped training: model training is not built yet")

    supervisor = Supervisor(env=env, log_dir=log_dir)
    stop = {"requested": False}

    def request_stop(signum, frame) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        model_base_path = model_repository / model_name
        model_base_path.mkdir(parents=True, exist_ok=True)
        supervisor.start(
            "model-server",
            [PYTHON, "-m", "ml.serving.server", f"--port={model_port}",
             f"--rest_api_port={rest_port}", f"--model_name={model_name}",
             f"--model_base_path={model_base_path}"],
        )  # fmt: skip
        supervisor.start(
            "worker",
            [PYTHON, "-m", "celery", "-A", "recommender", "worker", "--loglevel=INFO",
             "--concurrency=2", "--without-gossip", "--without-mingle"],
        )  # fmt: skip
        supervisor.start(
            "beat",
            [PYTHON, "-m", "celery", "-A", "recommender", "beat", "--loglevel=INFO",
             f"--schedule={var_dir / 'celerybeat-schedule'}"],
        )  # fmt: skip
        # /metrics adds up both web workers through files in an empty folder.
        metrics_dir = var_dir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        supervisor.start(
            "web",
            webserver.command(port=web_port, workers=2, threads=4, access_log=True, python=PYTHON),
            extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        )
        wait_for_http(f"{base_url}/healthz", supervisor, 60)
        readiness = wait_for_http(f"{base_url}/readyz", supervisor, 120)
        say(f"ready: {', '.join(readiness['checks'])} answer")

        sample = json.loads(
            manage(env, "load_demo_storefront", "--print-sample", capture=True) or "{}"
        )
        user_id = sample.get("user_id") or "demo-user-1"
        item_id = sample.get("item_id") or "demo-item-1"
        post_event = [
            "curl", "-sS", "-X", "POST", f"{base_url}/api/v1/events",
            "-H", f"Authorization: Bearer {api_key}", "-H", "Content-Type: application/json",
            "-d", json.dumps({"event_id": "demo-evt-1", "user_id": user_id,
                              "item_id": item_id, "type": "click"}),
        ]  # fmt: skip
        get_recs = [
            "curl", "-sS", f"{base_url}/api/v1/users/{user_id}/recommendations?count=5",
            "-H", f"Authorization: Bearer {api_key}",
        ]  # fmt: skip
        print(
            "\n"
            "  The recommender is running.\n\n"
            f"  Storefront     {base_url}/demo/\n"
            f"  API            {base_url}/api/v1/   (docs: {base_url}/api/v1/docs/)\n"
            f"  Admin          {base_url}/admin/   login: admin / {admin_password}\n"
            f"  Health         {base_url}/readyz   (metrics: {base_url}/metrics)\n"
            f"  Model server   gRPC 127.0.0.1:{model_port}, REST http://127.0.0.1:{rest_port}\n"
            f"  Logs           {log_dir}\n"
            f"  Demo API key   {api_key}\n\n"
            "  Post an event:\n"
            f"    {shlex.join(post_event)}\n\n"
            "  Get recommendations:\n"
            f"    {shlex.join(get_recs)}\n\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        if args.check:
            return check_commands(base_url, api_key, user_id, item_id)
        while not stop["requested"]:
            supervisor.check_alive()
            time.sleep(0.5)
        return 0
    finally:
        supervisor.stop_all()


def call_text(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (local URL)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def check_commands(base_url: str, api_key: str, user_id: str, item_id: str) -> int:
    """What a newcomer would do with the printed commands, with the answers judged."""
    failures = []
    status, body = call("GET", f"{base_url}/api/v1/me", api_key)
    if status != 200:
        failures.append(f"GET /api/v1/me -> {status} {body}")
    status, body = call(
        "POST", f"{base_url}/api/v1/events", api_key,
        {"event_id": "demo-evt-1", "user_id": user_id, "item_id": item_id, "type": "click"},
    )  # fmt: skip
    if status != 202:
        failures.append(f"POST /api/v1/events -> {status} {body}")
    # The first requests may miss the 50 ms budget while the web workers open their gRPC
    # channels (a fallback answers then); a few tries show the model path itself answers.
    for _attempt in range(20):
        status, body = call(
            "GET", f"{base_url}/api/v1/users/{user_id}/recommendations?count=5", api_key
        )
        if status == 200 and body.get("items") and body.get("source") in ("model", "cache"):
            break
        time.sleep(0.5)
    else:
        failures.append(f"GET recommendations -> {status} {body}")
    status, text = call_text(f"{base_url}/metrics")
    if status != 200 or "recommender_http_requests_total" not in text:
        failures.append(f"GET /metrics -> {status}")
    try:
        with urllib.request.urlopen(f"{base_url}/demo/", timeout=10) as response:  # noqa: S310
            page = response.read().decode()
        if "storefront-config" not in page:
            failures.append("GET /demo/ -> 200 without the storefront")
    except urllib.error.HTTPError as exc:
        failures.append(f"GET /demo/ -> {exc.code} {exc.read()[:300]!r}")
    for failure in failures:
        say(f"check failed: {failure}")
    say("check passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
