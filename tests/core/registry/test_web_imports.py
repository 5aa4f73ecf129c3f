"""The registry's web side (API, admin, the serving path's experiment choice) never loads
TensorFlow: validation imports it inside the worker's functions only."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_web_modules_do_not_load_tensorflow():
    code = (
        "import django, sys; django.setup();"
        "import recommender.urls, core.recommendations.services, core.registry.api,"
        " core.registry.admin, core.registry.services, core.registry.tasks;"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('tensorflow')}))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "recommender.settings"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
