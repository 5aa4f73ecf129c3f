"""`make demo` must reach "ready" from nothing and its printed commands must answer. This runs the
same script on free ports with a small storefront, in the embedded default (SQLite, filesystem
broker, the local model server), and lets it call the commands it prints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_demo_reaches_ready_and_its_commands_answer(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_ENV"}
    }
    env["RECOMMENDER_VAR_DIR"] = str(tmp_path / "var")

    result = subprocess.run(
        [sys.executable, "scripts/demo.py", "--check", "--small"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "[demo] ready" in output
    assert "[demo] check passed" in output
    assert "curl -sS -X POST" in output and "/recommendations?count=5" in output
