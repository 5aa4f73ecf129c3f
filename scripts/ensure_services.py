#!/usr/bin/env python3
"""Make sure PostgreSQL and Redis answer at the given URLs before the test suite runs.

Where one does not answer and it is local, start it if its binaries exist on this machine;
otherwise stop with a message saying how to start it. Never lets the suite skip silently.
Standard library only: it runs before the virtualenv matters.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def answers(host: str, port: int, probe: bytes | None = None, expect: bytes = b"") -> bool:
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=1.0) as sock:
            if probe is None:
                return True
            sock.sendall(probe)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def wait_for(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def ensure_postgres(url: str) -> None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
    if answers(host, port):
        print(f"PostgreSQL answers at {host}:{port}")
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if host in LOCAL_HOSTS and versions and shutil.which("pg_ctlcluster"):
        print(f"PostgreSQL does not answer at {host}:{port}; starting the local cluster")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
        )
        if wait_for(lambda: answers(host, port), 30):
            return
    sys.exit(
        f"PostgreSQL does not answer at {host}:{port} (DATABASE_URL={url}).\n"
        "Start it, e.g. `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        " or `docker compose up -d postgres`, or point TEST_DATABASE_URL at a running server."
    )


def ensure_redis(url: str) -> None:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379

    def ping() -> bool:
        return answers(host, port, b"PING\r\n", b"+PONG")

    if ping():
        print(f"Redis answers at {host}:{port}")
        return
    if host in LOCAL_HOSTS and shutil.which("redis-server"):
        print(f"Redis does not answer at {host}:{port}; starting a local redis-server")
        fallback = tempfile.gettempdir()
        log_dir = "/var/log/redis" if os.access("/var/log/redis", os.W_OK) else fallback
        data_dir = "/var/lib/redis" if os.access("/var/lib/redis", os.W_OK) else fallback
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
             "--port", str(port), "--save", "", "--appendonly", "no", "--dir", data_dir,
             "--logfile", os.path.join(log_dir, "ci.log")],
            check=False,
        )  # fmt: skip
        if wait_for(ping, 15):
            return
    sys.exit(
        f"Redis does not answer at {host}:{port} (REDIS_URL={url}).\n"
        "Start it, e.g. `redis-server --daemonize yes --port 6379 --save ''` or "
        "`docker compose up -d redis`, or point TEST_REDIS_URL at a running server."
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: ensure_services.py DATABASE_URL REDIS_URL")
    ensure_postgres(sys.argv[1])
    ensure_redis(sys.argv[2])
