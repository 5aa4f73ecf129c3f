"""Online metrics per arm from impressions and attributed events, the significance indicator,
guardrails that roll a canary back, and the admin pages that show and drive all of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.catalog.models import Item, User
from core.events.models import Event
from core.recommendations.models import Impression
from core.registry import arm_stats, services
from core.registry.models import Experiment, ModelVersion, VersionStatus
from core.registry.selectors import ctr_significance, experiment_report, guardrail_verdict
from ml.serving.client import PredictionClient

from .helpers import push_and_validate

pytestmark = pytest.mark.django_db

NAME = "recommender"


@pytest.fixture
def canary(model_server, repository, archives) -> Experiment:
    stable = push_and_validate(archives["good"])
    candidate = push_and_validate(archives["other"])
    services.model_version_deploy(name=NAME, number=stable.number, mode="stable", actor="t")
    services.model_version_deploy(
        name=NAME, number=candidate.number, mode="canary", traffic_percent=50, actor="t"
    )
    return Experiment.objects.select_related("model", "stable_version", "candidate_version").get()


def _shown(version: int, lists: int, *, clicked: int, purchases: int, price: float) -> None:
    """`lists` impressions of `version`: the first `clicked` are clicked, the first `purchases`
    bought for `price`."""
    now = timezone.now()
    user, _ = User.objects.get_or_create(
        external_id="u", defaults={"created_at": now, "updated_at": now}
    )
    item, _ = Item.objects.get_or_create(
        external_id="item-0", defaults={"created_at": now, "updated_at": now}
    )
    Impression.objects.bulk_create(
        Impression(
            recommendation_id=f"v{version}-{index:028d}",
            page=1,
            surface="user",
            user_external_id="u",
            model_name=NAME,
            model_version=version,
            source="model",
            item_ids=["item-0"],
        )
        for index in range(lists)
    )
    events = []
    for index in range(lists):
        kinds = (["click"] if index < clicked else []) + (["purchase"] if index < purchases else [])
        for kind in kinds:
            events.append(
                Event(
                    event_id=f"{version}-{index}-{kind}",
                    user=user,
                    item=item,
                    type=kind,
                    value=price if kind == "purchase" else None,
                    timestamp=now,
                    ingested_at=now,
                    recommendation_id=f"v{version}-{index:028d}",
                )
            )
    Event.objects.bulk_create(events)


def test_metrics_per_arm_from_impressions_and_attributed_events(canary):
    # given: stable shown 1000 times, 50 clicked, 10 bought at 20; canary 1000, 100 clicked
    _shown(1, 1000, clicked=50, purchases=10, price=20.0)
    _shown(2, 1000, clicked=100, purchases=30, price=20.0)
    for _ in range(10):
        arm_stats.record(experiment_id=canary.pk, arm="canary", model_seconds=0.004)
    arm_stats.record(experiment_id=canary.pk, arm="canary", error=True)
    arm_stats.flush()
    # when
    report = experiment_report(canary)
    stable, candidate = report.arms["stable"], report.arms["canary"]
    # then
    assert (stable.lists, stable.clicked_lists, stable.purchases) == (1000, 50, 10)
    assert stable.ctr == pytest.approx(0.05)
    assert stable.revenue_per_1000 == pytest.approx(200.0)
    assert candidate.ctr == pytest.approx(0.10)
    assert candidate.conversion == pytest.approx(0.03)
    assert candidate.requests == 11 and candidate.errors == 1
    assert candidate.mean_latency_ms == pytest.approx(4.0, rel=0.01)
    assert report.significance is not None and report.significance.significant
    assert "candidate better" in report.significance.verdict
    assert report.series["canary"]  # the same figures over time


def test_significance_needs_enough_data_and_a_real_difference():
    from core.registry.selectors import ArmMetrics

    small = ctr_significance(ArmMetrics("stable", 1, lists=10), ArmMetrics("canary", 2, lists=10))
    assert not small.significant and "not enough" in small.verdict
    same = ctr_significance(
        ArmMetrics("stable", 1, lists=1000, clicked_lists=50),
        ArmMetrics("canary", 2, lists=1000, clicked_lists=52),
    )
    assert not same.significant and same.p_value > 0.5


def test_the_experiment_api_shows_the_arms(canary, make_client):
    _shown(1, 100, clicked=5, purchases=0, price=0)
    body = make_client("models:write").get(f"/api/v1/models/{NAME}/experiment").json()
    assert body["status"] == "running" and body["candidate_version"] == 2
    arms = {arm["arm"]: arm for arm in body["arms"]}
    assert arms["stable"]["lists"] == 100 and arms["stable"]["ctr"] == 0.05
    assert "significance" in body


def _canary_label(model_server) -> int:
    with PredictionClient(f"127.0.0.1:{model_server.grpc_port}", timeout=10) as client:
        return client.recommend(["item-1"], k=3, model=NAME, label="canary").model_version


def test_a_canary_breaking_the_error_guardrail_for_long_enough_is_rolled_back(
    canary, model_server, settings
):
    settings.REGISTRY_GUARDRAIL_BREACH_SECONDS = 300
    for index in range(20):
        arm_stats.record(experiment_id=canary.pk, arm="canary", error=index % 2 == 0)
    arm_stats.flush()
    assert guardrail_verdict(canary).breached
    # first sighting: noted, not acted on
    now = timezone.now()
    assert "breach for 0 s" in services.experiments_guard(now=now)[0]
    canary.refresh_from_db()
    assert canary.status == "running" and canary.guardrail_breach_since is not None
    assert "error rate" in canary.guardrail_breach
    # still breached after the configured time: rolled back
    done = services.experiments_guard(now=now + timedelta(seconds=301))
    assert "rolled back automatically" in done[0]
    canary.refresh_from_db()
    assert canary.status == "rolled_back" and "guardrail: error rate" in canary.end_reason
    candidate = ModelVersion.objects.get(pk=canary.candidate_version_id)
    assert candidate.status == VersionStatus.RETIRED
    assert _canary_label(model_server) == canary.stable_version.number


def test_a_ctr_drop_trips_the_guardrail_and_a_healthy_canary_does_not(canary, settings):
    settings.REGISTRY_GUARDRAIL_MIN_IMPRESSIONS = 200
    _shown(1, 300, clicked=30, purchases=0, price=0)
    _shown(2, 300, clicked=30, purchases=0, price=0)
    assert not guardrail_verdict(canary).breached
    Event.objects.filter(recommendation_id__startswith="v2-", type="click").filter(
        recommendation_id__gt="v2-" + "0" * 26 + "10"
    ).delete()  # the canary's CTR falls to a fraction of the stable one's
    verdict = guardrail_verdict(canary)
    assert verdict.breached and "CTR" in verdict.reasons[0]


def test_admin_push_form_report_page_and_actions(canary, admin_client, archives):
    from django.urls import reverse

    # the upload form
    with open(archives["third"], "rb") as stream:
        response = admin_client.post(
            reverse("admin:registry_push"), {"name": NAME, "archive": stream}
        )
    assert response.status_code == 302
    assert ModelVersion.objects.filter(status=VersionStatus.UPLOADED).count() == 1
    # the experiment page with charts and the significance indicator
    _shown(1, 100, clicked=5, purchases=1, price=10)
    _shown(2, 100, clicked=9, purchases=1, price=10)
    page = admin_client.get(reverse("admin:registry_experiment_report", args=[canary.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("<svg width=") == 5 and "polyline" in html
    assert "CTR significance" in html and "Revenue per 1,000 lists" in html
    # the list pages render
    for model in ("registeredmodel", "modelversion", "experiment", "auditentry"):
        assert admin_client.get(reverse(f"admin:registry_{model}_changelist")).status_code == 200
    # promote, then roll back, as admin actions
    changelist = reverse("admin:registry_registeredmodel_changelist")
    model_pk = canary.model.pk
    admin_client.post(changelist, {"action": "promote", "_selected_action": [model_pk]})
    assert ModelVersion.objects.get(status=VersionStatus.STABLE).number == 2
    admin_client.post(changelist, {"action": "rollback", "_selected_action": [model_pk]})
    assert ModelVersion.objects.get(status=VersionStatus.STABLE).number == 1
    response = admin_client.post(
        changelist, {"action": "promote", "_selected_action": [model_pk]}, follow=True
    )
    assert "promote refused" in response.content.decode()
    # deploy a ready version as a canary from the version list
    version = ModelVersion.objects.get(number=2)
    admin_client.post(
        reverse("admin:registry_modelversion_changelist"),
        {"action": "deploy_canary", "_selected_action": [version.pk]},
    )
    assert Experiment.objects.get(status="running").candidate_version_id == version.pk
