"""The embedded default (no environment: SQLite, filesystem broker, file cache) must not rot:
migrate, start a real worker process, enqueue from another process, see the task's effect."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def embedded_env(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_ENV"}
    }
    env.update(
        RECOMMENDER_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="recommender.settings"
    )
    return env


def manage(env, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_worker_runs_a_task_sent_from_another_process(embedded_env, tmp_path):
    manage(embedded_env, "migrate", "--verbosity", "0")
    assert (tmp_path / "var" / "db.sqlite3").exists()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "recommender", "worker", "--pool", "solo",
         "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=ROOT, env=embedded_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # when: a separate process enqueues through the filesystem broker
        manage(
            embedded_env, "shell", "-v", "0", "-c",
            "from core.system.tasks import heartbeat_task; heartbeat_task.delay()",
        )  # fmt: skip

        # then: the worker ran it and its effect is visible to yet another process
        probe = "from core.system.selectors import heartbeat_age_seconds as a; print(a())"
        deadline = time.monotonic() + 60
        age = "None"
        while time.monotonic() < deadline and worker.poll() is None:
            age = manage(embedded_env, "shell", "-v", "0", "-c", probe).strip()
            if age != "None":
                break
            time.sleep(0.5)
        assert worker.poll() is None, "the worker exited"
        assert age != "None", "the task never ran"
        assert float(age) < 60
    finally:
        worker.terminate()
        worker.wait(timeout=30)
