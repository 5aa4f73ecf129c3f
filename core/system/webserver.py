"""The web server's command line, in one place for everything that starts the API (the demo, the
resilience stack, the benchmarks; the Dockerfile and docker-compose.yml spell out the same flags).

Granian serves the WSGI application: it reads and writes HTTP in Rust and hands each request to
one of a worker's Python threads. On two cores, a WSGI app answering a constant body cost 0.17-0.19
ms of CPU a request under it, against 0.69-0.77 ms under gunicorn's gthread worker; the cached
recommendations endpoint 2.26-2.72 ms against 2.52-3.30 (docs/storefront-and-serving-bench.md).
"""

from __future__ import annotations

import argparse
import sys

APPLICATION = "recommender.wsgi:application"


def command(
    *,
    port: int,
    host: str = "127.0.0.1",
    workers: int = 2,
    threads: int = 4,
    access_log: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """`workers` processes of `threads` Python threads each; a worker that dies is started
    again. HTTP/1.1 keep-alive is on; no websockets."""
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be at least 1")
    return [
        python, "-m", "granian", "--interface=wsgi", f"--host={host}", f"--port={port}",
        f"--workers={workers}", f"--blocking-threads={threads}", "--no-ws",
        "--respawn-failed-workers", "--log-level=warning",
        "--access-log" if access_log else "--no-access-log",
        APPLICATION,
    ]  # fmt: skip


def count(text: str) -> int:
    """An argparse type for a worker or thread count: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, at least 1")
    return value
