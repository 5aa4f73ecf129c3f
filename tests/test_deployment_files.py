"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees with the code:
services, commands, and that every variable it sets is one the settings read, and vice versa the
README documents every variable the settings read."""

import json
import re
from pathlib import Path

import pytest
import yaml

from core.system import webserver

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("web", "worker", "beat", "migrate")


def settings_variables() -> set[str]:
    pattern = re.compile(r'env_\w+\(\s*"([A-Z][A-Z0-9_]+)"')
    found: set[str] = set()
    for path in (ROOT / "recommender" / "settings").glob("*.py"):
        found.update(pattern.findall(path.read_text()))
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_settings_read_the_documented_core_variables():
    assert {
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "MODEL_SERVER_TARGET",
        "MODEL_REPOSITORY",
        "DJANGO_SECRET_KEY",
        "DJANGO_DEBUG",
    } <= settings_variables()


def test_compose_has_the_production_topology(compose):
    assert set(compose["services"]) >= {
        "postgres", "redis", "web", "worker", "beat", "tfserving", "migrate",
    }  # fmt: skip
    assert compose["services"]["tfserving"]["image"].startswith("tensorflow/serving:")


def test_app_services_set_only_variables_the_settings_read(compose):
    known = settings_variables()
    for name in APP_SERVICES:
        environment = compose["services"][name]["environment"]
        unknown = set(environment) - known
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        assert environment["DJANGO_ENV"] == "production"
        for required in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL"):
            assert environment.get(required), f"{name} lacks {required}"


def test_app_commands_start_what_they_say(compose):
    services = compose["services"]
    # The web server's flags as core/system/webserver.py gives them to the demo and the stacks.
    expected = webserver.command(port=8000, host="0.0.0.0", workers=2, threads=4, access_log=True)
    assert services["web"]["command"] == ["granian", *expected[3:]]
    assert services["worker"]["command"][:4] == ["celery", "-A", "recommender", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "recommender", "beat"]
    migrate = " ".join(services["migrate"]["command"])
    assert "manage.py migrate --noinput" in migrate
    assert "manage.py registry_apply --file-only" in migrate


def test_the_image_starts_the_web_server_as_webserver_py_does():
    line = next(
        part
        for part in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if part.startswith("CMD ")
    )
    expected = webserver.command(port=8000, host="0.0.0.0", workers=2, threads=4)
    assert json.loads(line.removeprefix("CMD ")) == ["granian", *expected[3:]]


def test_app_and_tfserving_share_the_model_repository(compose):
    services = compose["services"]
    environment = services["web"]["environment"]
    tfserving = services["tfserving"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in tfserving["volumes"]}
    app_mounts = {
        volume.split(":")[0]: volume.split(":")[1] for volume in services["web"]["volumes"]
    }
    assert mounts["models"] == app_mounts["models"] == environment["MODEL_REPOSITORY"]
    flags = dict(arg.lstrip("-").split("=", 1) for arg in tfserving["command"])
    # The registry writes REGISTRY_MODEL_CONFIG_FILE, by default MODEL_REPOSITORY/models.config.
    assert "REGISTRY_MODEL_CONFIG_FILE" not in environment
    assert flags["model_config_file"] == f"{environment['MODEL_REPOSITORY']}/models.config"
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0
    host, port = environment["MODEL_SERVER_TARGET"].split(":")
    assert host == "tfserving" and port == flags["port"]


def test_database_and_broker_urls_point_at_compose_services(compose):
    environment = compose["services"]["web"]["environment"]
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://redis:6379")
    assert environment["CELERY_BROKER_URL"].startswith("redis://redis:6379")


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    undocumented = sorted(name for name in settings_variables() if f"`{name}`" not in readme)
    assert not undocumented, f"README configuration table lacks: {undocumented}"
