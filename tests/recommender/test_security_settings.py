"""Production settings pass Django's deploy check and send the security headers; the admin sits
behind its own login with CSRF."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CORS_", "API_"))}
    env.update(
        DJANGO_ENV="production",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DJANGO_SETTINGS_MODULE="recommender.settings",
        RECOMMENDER_VAR_DIR=str(tmp_path),
    )
    return env


def test_check_deploy_is_clean_in_production_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout


HEADERS_SCRIPT = """
import json, django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="api.example.com")
secure = client.get("/api/v1/no-such-route", secure=True)
plain = client.get("/api/v1/no-such-route")
print(json.dumps({
    "status": secure.status_code,
    "headers": dict(secure.headers),
    "plain_status": plain.status_code,
    "plain_location": plain.headers.get("Location"),
}))
"""


def test_production_responses_carry_the_security_headers_and_http_redirects(tmp_path):
    import json

    result = subprocess.run(
        [sys.executable, "-c", HEADERS_SCRIPT],
        cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])

    headers = answer["headers"]
    assert answer["status"] == 404
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert "includeSubDomains" in headers["Strict-Transport-Security"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert answer["plain_status"] == 301
    assert answer["plain_location"].startswith("https://api.example.com/")


@pytest.mark.django_db
def test_admin_login_form_carries_a_csrf_token_and_a_post_without_it_is_refused(
    django_user_model,
):
    from django.test import Client

    django_user_model.objects.create_superuser("root", "root@example.com", "a-long-password-1")
    client = Client(enforce_csrf_checks=True)

    # the login page is the admin's own, with a CSRF token in the form
    form = client.get("/admin/login/")
    assert form.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in form.content
    # the admin itself redirects to it
    assert client.get("/admin/").status_code == 302

    # a POST with the right password but no token is refused
    refused = client.post(
        "/admin/login/?next=/admin/", {"username": "root", "password": "a-long-password-1"}
    )
    assert refused.status_code == 403
    assert client.get("/admin/").status_code == 302

    # with the token from the form it goes through
    token = form.cookies["csrftoken"].value
    client.cookies["csrftoken"] = token
    accepted = client.post(
        "/admin/login/?next=/admin/",
        {"username": "root", "password": "a-long-password-1", "csrfmiddlewaretoken": token},
    )
    assert accepted.status_code == 302
    assert client.get("/admin/").status_code == 200


@pytest.mark.parametrize(
    "env, named",
    [
        ({"API_RATE_LIMITS": "events:write=lots"}, "API_RATE_LIMITS: expected"),
        ({"CORS_ALLOWED_ORIGINS": "shop.example.com"}, "CORS_ALLOWED_ORIGINS: expected"),
        ({"DJANGO_SECURE_HSTS_PRELOAD": "maybe"}, "DJANGO_SECURE_HSTS_PRELOAD: expected"),
    ],
)
def test_bad_security_settings_stop_start_up_naming_the_variable(tmp_path, env, named):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT, env={**production_env(tmp_path), **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip

    assert result.returncode != 0
    assert named in result.stderr, result.stderr[-2000:]
