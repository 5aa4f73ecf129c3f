"""Deployment: the registry's state becomes the model server's config (specific versions,
`stable` and `canary` labels), applied with HandleReloadConfigRequest; promote and rollback move
the labels; bad transitions are refused with the registry and the served model unchanged."""

from __future__ import annotations

from collections import Counter

import pytest

from core.registry import services
from core.registry.models import AuditEntry, Experiment, ModelVersion, VersionStatus
from core.registry.selectors import in_canary_arm, serving_plan
from ml.serving.client import PredictionClient

from .helpers import push_and_validate

pytestmark = pytest.mark.django_db

NAME = "recommender"


def _served_by_label(model_server, label: str) -> int:
    with PredictionClient(f"127.0.0.1:{model_server.grpc_port}", timeout=10) as client:
        return client.recommend(["item-1"], k=3, model=NAME, label=label).model_version


def _loaded(model_server) -> list[int]:
    return sorted(v for (name, v) in _available(model_server) if name == NAME)


def _available(model_server) -> set[tuple[str, int]]:
    with PredictionClient(f"127.0.0.1:{model_server.grpc_port}", timeout=10) as client:
        return {(NAME, s.version) for s in client.model_status(NAME) if s.available}


def _three_ready_versions(archives) -> None:
    for name in ("good", "other", "third"):
        assert push_and_validate(archives[name]).status == VersionStatus.READY


def test_first_stable_then_canary_promote_and_rollback(
    make_client, model_server, repository, archives
):
    client = make_client("models:write")
    _three_ready_versions(archives)
    # first stable
    response = client.post(
        f"/api/v1/models/{NAME}/versions/1/deploy", {"mode": "stable"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert _served_by_label(model_server, "stable") == 1
    assert _served_by_label(model_server, "canary") == 1
    config = (repository / "models.config").read_text()
    assert 'base_path: "' in config and "versions: 1" in config
    assert 'key: "stable"' in config and "value: 1" in config
    assert serving_plan(user_id="anyone").label == "stable"
    # canary for half of the shoppers
    response = client.post(
        f"/api/v1/models/{NAME}/versions/2/deploy",
        {"mode": "canary", "traffic_percent": 50},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["model"]["experiment"]["candidate_version"] == 2
    assert _served_by_label(model_server, "stable") == 1
    assert _served_by_label(model_server, "canary") == 2
    assert _loaded(model_server) == [1, 2]
    # promote
    response = client.post(f"/api/v1/models/{NAME}/promote", {}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["model"]["stable_version"] == 2
    assert _served_by_label(model_server, "stable") == 2
    assert _served_by_label(model_server, "canary") == 2
    assert _loaded(model_server) == [1, 2]  # the previous stable stays loaded for a rollback
    assert ModelVersion.objects.get(number=1).status == VersionStatus.RETIRED
    assert Experiment.objects.get().status == "promoted"
    # canary 3, promote, then roll back twice
    assert services.model_version_deploy(name=NAME, number=3, mode="canary", actor="t")
    services.model_promote(name=NAME, actor="t")
    assert _served_by_label(model_server, "stable") == 3
    assert _loaded(model_server) == [2, 3]  # version 1 unloaded: two stables ago
    response = client.post(f"/api/v1/models/{NAME}/rollback", {"reason": "bad CTR"}, format="json")
    assert response.status_code == 200, response.json()
    assert _served_by_label(model_server, "stable") == 2
    rolled_back = ModelVersion.objects.get(number=3)
    assert rolled_back.status == VersionStatus.RETIRED
    assert "bad CTR" in rolled_back.status_reason
    services.model_rollback(name=NAME, actor="t")
    assert _served_by_label(model_server, "stable") == 1
    assert _loaded(model_server) == [1]
    # and no further
    response = client.post(f"/api/v1/models/{NAME}/rollback", {}, format="json")
    assert response.status_code == 409
    assert "no previous stable version" in response.json()["error"]["message"]
    assert _served_by_label(model_server, "stable") == 1
    actions = Counter(AuditEntry.objects.values_list("action", flat=True))
    assert actions["deploy"] == 3 and actions["promote"] == 2 and actions["rollback"] == 2
    assert actions["refused"] == 1
    audit = client.get(f"/api/v1/models/{NAME}/audit").json()["entries"]
    assert audit[0]["action"] == "refused"


def test_bad_transitions_are_refused_and_change_nothing(
    make_client, model_server, repository, archives
):
    client = make_client("models:write")
    good = push_and_validate(archives["good"])
    failed = push_and_validate(archives["wrong_signature"])
    assert failed.status == VersionStatus.FAILED
    # nothing deployed yet: a canary needs a stable
    response = client.post(
        f"/api/v1/models/{NAME}/versions/1/deploy", {"mode": "canary"}, format="json"
    )
    assert response.status_code == 409
    assert "no stable version yet" in response.json()["error"]["message"]
    # rollback with nothing deployed
    assert client.post(f"/api/v1/models/{NAME}/rollback", {}, format="json").status_code == 409
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    # promote without a canary
    response = client.post(f"/api/v1/models/{NAME}/promote", {}, format="json")
    assert response.status_code == 409
    assert "no canary or shadow version to promote" in response.json()["error"]["message"]
    # a second stable by deployment
    other = push_and_validate(archives["other"])
    response = client.post(
        f"/api/v1/models/{NAME}/versions/{other.number}/deploy",
        {"mode": "stable"},
        format="json",
    )
    assert response.status_code == 409
    # unknown version, unknown model, bad mode
    assert (
        client.post(f"/api/v1/models/{NAME}/versions/99/deploy", {}, format="json").status_code
        == 404
    )
    assert client.post("/api/v1/models/nope/promote", {}, format="json").status_code == 404
    response = client.post(
        f"/api/v1/models/{NAME}/versions/2/deploy", {"mode": "blue"}, format="json"
    )
    assert response.status_code == 400
    # a second experiment while one runs
    services.model_version_deploy(name=NAME, number=other.number, mode="canary", actor="t")
    third = push_and_validate(archives["third"])
    response = client.post(
        f"/api/v1/models/{NAME}/versions/{third.number}/deploy", {}, format="json"
    )
    assert response.status_code == 409
    assert "is running" in response.json()["error"]["message"]
    # served model untouched throughout
    assert _served_by_label(model_server, "stable") == good.number
    assert _served_by_label(model_server, "canary") == other.number
    assert ModelVersion.objects.get(number=good.number).status == VersionStatus.STABLE


def test_promoting_a_failed_version_is_refused(model_server, repository, archives):
    good = push_and_validate(archives["good"])
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    failed = push_and_validate(archives["wrong_signature"])
    assert failed.number is None  # failed versions never get a number, so cannot be addressed
    with pytest.raises(services.TransitionRefused, match="no canary or shadow"):
        services.model_promote(name=NAME, actor="t")
    # a ready version that later failed (e.g. marked by hand) cannot be deployed
    ready = push_and_validate(archives["other"])
    ModelVersion.objects.filter(pk=ready.pk).update(status="failed", status_reason="bad data")
    with pytest.raises(services.TransitionRefused, match="is failed: bad data"):
        services.model_version_deploy(name=NAME, number=ready.number, mode="canary", actor="t")
    assert _served_by_label(model_server, "stable") == good.number


def test_a_model_server_that_refuses_leaves_the_registry_unchanged(
    model_server, repository, archives, settings
):
    good = push_and_validate(archives["good"])
    other = push_and_validate(archives["other"])
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    # the canary's folder is gone from disk: the server cannot load it
    import shutil

    shutil.rmtree(repository / NAME / str(other.number))
    settings.REGISTRY_DEPLOY_TIMEOUT_SECONDS = 3.0
    with pytest.raises(services.DeploymentFailed):
        services.model_version_deploy(name=NAME, number=other.number, mode="canary", actor="t")
    assert ModelVersion.objects.get(pk=other.pk).status == VersionStatus.READY
    assert not Experiment.objects.exists()
    assert _served_by_label(model_server, "stable") == good.number
    assert _served_by_label(model_server, "canary") == good.number
    assert AuditEntry.objects.filter(action="refused").exists()


def test_a_dead_model_server_fails_the_deployment_cleanly(repository, archives, settings):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.MODEL_SERVER_TARGET = f"127.0.0.1:{port}"
    settings.REGISTRY_DEPLOY_TIMEOUT_SECONDS = 2.0
    good = push_and_validate(archives["good"])
    with pytest.raises(services.DeploymentFailed, match=r"refused the config|UNAVAILABLE"):
        services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    assert ModelVersion.objects.get(pk=good.pk).status == VersionStatus.READY


def test_canary_split_is_deterministic_and_near_the_share(
    model_server, repository, archives, settings
):
    good = push_and_validate(archives["good"])
    other = push_and_validate(archives["other"])
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    services.model_version_deploy(
        name=NAME, number=other.number, mode="canary", actor="t", traffic_percent=20
    )
    settings.REGISTRY_ASSIGNMENT_TTL_SECONDS = 60.0  # one read of the experiment for all
    plans = [serving_plan(user_id=f"user-{i}") for i in range(5000)]
    share = sum(plan.label == "canary" for plan in plans) / len(plans)
    assert 0.17 < share < 0.23
    # the same shopper always lands in the same arm
    assert [serving_plan(user_id=f"user-{i}").label for i in range(200)] == [
        plan.label for plan in plans[:200]
    ]
    # anonymous shoppers see the stable version
    assert serving_plan(user_id="").label == "stable"
    experiment = Experiment.objects.get()
    assert plans[0].experiment_id == experiment.pk
    assert in_canary_arm(salt="s", user_id="u", percent=100)
    assert not in_canary_arm(salt="s", user_id="u", percent=0)


def test_shadow_mode_scores_but_never_shows(model_server, repository, archives, catalog):
    from core.recommendations import services as recommendations
    from core.registry import arm_stats, shadow

    good = push_and_validate(archives["good"])
    other = push_and_validate(archives["other"])
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    services.model_version_deploy(name=NAME, number=other.number, mode="shadow", actor="t")
    plan = serving_plan(user_id="shopper-1")
    assert plan.label == "stable" and plan.shadow_label == "canary"
    # when
    for index in range(5):
        page = recommendations.recommendations_for_user(
            user_id=f"shopper-{index}", count=5, session_items=[f"item-{index}"]
        )
        assert page.model_version == good.number
    shadow.shadow_score(
        history=[],
        k=10,
        shown=[],
        plan=plan,
        wait=True,
    )
    shadow._pool().submit(lambda: None).result()  # the earlier submissions have finished
    arm_stats.flush()
    experiment = Experiment.objects.get()
    import time

    counters = arm_stats.read(experiment.pk, ["stable", "shadow"], time.time() - 600, time.time())
    shadow_requests = sum(b["requests"] for b in counters["shadow"].values())
    stable_requests = sum(b["requests"] for b in counters["stable"].values())
    assert stable_requests == 5
    assert shadow_requests >= 1
    assert sum(b["errors"] for b in counters["shadow"].values()) == 0


def test_registry_apply_restores_a_restarted_server(model_server, repository, archives):
    from django.core.management import call_command

    good = push_and_validate(archives["good"])
    services.model_version_deploy(name=NAME, number=good.number, mode="stable", actor="t")
    (repository / "models.config").unlink()
    call_command("registry_apply", "--file-only")
    assert 'key: "stable"' in (repository / "models.config").read_text()
    # the server forgot everything (a restart with an empty model list)
    from ml.serving.client import PredictionClient as Client

    with Client(f"127.0.0.1:{model_server.grpc_port}") as client:
        client.reload_config([])
    call_command("registry_apply")
    assert _served_by_label(model_server, "stable") == good.number


def test_registry_apply_file_only_with_nothing_deployed(repository):
    from django.core.management import call_command

    call_command("registry_apply", "--file-only")
    text = (repository / "models.config").read_text()
    assert 'name: "recommender"' in text and "version_labels" not in text


def test_base_paths_follow_the_model_servers_view_of_the_repository(settings, repository):
    from core.registry.deployment import served_model

    assert served_model(name=NAME, stable=1, candidate=None, previous=None).base_path == str(
        repository.resolve() / NAME
    )
    settings.REGISTRY_SERVER_REPOSITORY = "/models"
    served = served_model(name=NAME, stable=3, candidate=4, previous=2)
    assert served.base_path == "/models/recommender"
    assert served.versions == (2, 3, 4) and dict(served.labels) == {"stable": 3, "canary": 4}


def test_the_gateway_steps_down_when_the_server_lost_its_labels(model_server, repository, archives):
    from core.recommendations import model_gateway
    from core.recommendations.sources import HistoryEntry
    from ml.serving.client import ModelConfig

    good = push_and_validate(archives["good"])
    # a server restarted with --model_base_path only: versions, no labels
    with PredictionClient(f"127.0.0.1:{model_server.grpc_port}") as client:
        client.reload_config([ModelConfig(name=NAME, base_path=str(repository / NAME))])
    answer = model_gateway.recommend(
        [HistoryEntry("item-1", 1.0)], k=5, budget_seconds=5.0, label="canary"
    )
    assert answer.model_version == good.number and answer.candidates
