"""Bad configuration stops start-up with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "DJANGO_ENV",
    "DJANGO_DEBUG",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "MODEL_SERVER_TARGET",
)


def load_settings(tmp_path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    clean.update(RECOMMENDER_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="recommender.settings")
    clean.update(env)
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_defaults_start_with_nothing_set(tmp_path):
    result = load_settings(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "env, named",
    [
        ({"DJANGO_ENV": "production"}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "short"}, "DJANGO_SECRET_KEY"),
        (
            {"DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "x" * 50, "DJANGO_DEBUG": "true"},
            "DJANGO_DEBUG must be off",
        ),
        (
            {"DJANGO_ENV": "production", "DJANGO_SECRET_KEY": "x" * 50},
            "DJANGO_ALLOWED_HOSTS must be set",
        ),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG: expected a boolean, got 'maybe'"),
        ({"DJANGO_ENV": "staging"}, "DJANGO_ENV: expected one of development/production/test"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL: expected a database URL"),
        ({"DATABASE_URL": "oracle2://x/y"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL: expected a URL"),
        ({"CELERY_BROKER_URL": "kafka://x"}, "CELERY_BROKER_URL"),
        ({"MODEL_SERVER_TARGET": "tfserving"}, "MODEL_SERVER_TARGET: expected a gRPC target"),
        ({"MODEL_SERVER_TIMEOUT_MS": "0"}, "MODEL_SERVER_TIMEOUT_MS: expected an integer"),
        ({"API_MAX_BODY_BYTES": "lots"}, "API_MAX_BODY_BYTES"),
    ],
)
def test_bad_settings_stop_startup_naming_the_variable(tmp_path, env, named):
    result = load_settings(tmp_path, **env)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr


def test_production_starts_with_what_it_needs(tmp_path):
    result = load_settings(
        tmp_path,
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY="s" * 50,
        DJANGO_ALLOWED_HOSTS="shop.example.com",
    )

    assert result.returncode == 0, result.stderr
