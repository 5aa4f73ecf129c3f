from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from core.recommendations.ranking import ActiveRule, RuleKind

from . import arm_stats
from .models import (
    BusinessRule,
    Experiment,
    ExperimentMode,
    ExperimentStatus,
    ModelVersion,
    VersionStatus,
)

logger = logging.getLogger(__name__)

# Rules are read on every recommendation; an admin's change is in force within this many seconds.
RULES_TTL_SECONDS = 2.0
_rules_cache: tuple[float, list[ActiveRule]] | None = None


def business_rules_active(
    *, now: datetime | None = None, use_cache: bool = True
) -> list[ActiveRule]:
    global _rules_cache
    if use_cache and now is None and _rules_cache and _rules_cache[0] > time.monotonic():
        return _rules_cache[1]
    moment = now or timezone.now()
    rows = BusinessRule.objects.filter(
        Q(starts_at__isnull=True) | Q(starts_at__lte=moment),
        Q(ends_at__isnull=True) | Q(ends_at__gt=moment),
        enabled=True,
    )
    try:
        rules = [
            ActiveRule(
                kind=RuleKind(row.kind),
                item_ids=frozenset(row.item_ids),
                category=row.category,
                factor=row.factor,
                position=row.position,
            )
            for row in rows
        ]
    except DatabaseError:
        if now is not None or _rules_cache is None:
            raise
        # The database is out of reach: the rules last read stay in force (nobody can edit them
        # meanwhile); the read path goes on serving.
        logger.warning("business rules: the database is out of reach, keeping the last read")
        _rules_cache = (time.monotonic() + RULES_TTL_SECONDS, _rules_cache[1])
        return _rules_cache[1]
    if now is None:
        _rules_cache = (time.monotonic() + RULES_TTL_SECONDS, rules)
    return rules


def business_rules_cache_clear() -> None:
    """Make the next read see the database (after an edit in this process; tests)."""
    global _rules_cache
    _rules_cache = None


# --- which model version serves a shopper ------------------------------------------------------

STABLE = "stable"
CANARY = "canary"
SHADOW = "shadow"


@dataclass(frozen=True)
class ServingPlan:
    """What the serving path asks the model server for. `label` None: the registry has deployed
    nothing (the server serves its latest version); `arm` is "" then."""

    label: str | None = None
    arm: str = ""
    experiment_id: int | None = None
    shadow_label: str | None = None


@dataclass(frozen=True)
class _ExperimentState:
    deployed: bool = False
    experiment_id: int | None = None
    mode: str = ""
    percent: float = 0.0
    salt: str = ""


_NOTHING_DEPLOYED = ServingPlan()
_plan_lock = threading.Lock()
_plan_cache: tuple[float, _ExperimentState] | None = None


def in_canary_arm(*, salt: str, user_id: str, percent: float) -> bool:
    """Deterministic per (experiment, shopper): the same shopper always lands in the same arm,
    and the arms of different experiments are independent."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < round(percent * 100)


def _experiment_state() -> _ExperimentState:
    global _plan_cache
    cached = _plan_cache
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    with _plan_lock:
        cached = _plan_cache
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        name = settings.MODEL_NAME
        try:
            deployed = ModelVersion.objects.filter(
                model__name=name, status=VersionStatus.STABLE
            ).exists()
            running = (
                Experiment.objects.filter(model__name=name, status=ExperimentStatus.RUNNING)
                .values("id", "mode", "traffic_percent", "salt")
                .first()
            )
        except Exception:  # the database is down: keep the last plan a little longer
            logger.warning("could not read the serving plan", exc_info=True)
            return cached[1] if cached is not None else _ExperimentState()
        state = _ExperimentState(
            deployed=deployed,
            experiment_id=running["id"] if running else None,
            mode=running["mode"] if running else "",
            percent=running["traffic_percent"] if running else 0.0,
            salt=running["salt"] if running else "",
        )
        _plan_cache = (time.monotonic() + settings.REGISTRY_ASSIGNMENT_TTL_SECONDS, state)
        return state


def serving_plan(*, user_id: str) -> ServingPlan:
    """The label (and experiment arm) for this shopper's model request. Anonymous shoppers
    (no user id) are served by the stable version."""
    state = _experiment_state()
    if not state.deployed:
        return _NOTHING_DEPLOYED
    if state.experiment_id is None:
        return ServingPlan(label=STABLE, arm=STABLE)
    if state.mode == ExperimentMode.SHADOW:
        return ServingPlan(
            label=STABLE, arm=STABLE, experiment_id=state.experiment_id, shadow_label=CANARY
        )
    if user_id and in_canary_arm(salt=state.salt, user_id=user_id, percent=state.percent):
        return ServingPlan(label=CANARY, arm=CANARY, experiment_id=state.experiment_id)
    return ServingPlan(label=STABLE, arm=STABLE, experiment_id=state.experiment_id)


def serving_plan_cache_clear() -> None:
    global _plan_cache
    _plan_cache = None


# --- online metrics per arm ------------------------------------------------------------------

CLICK_TYPES = ("click",)
ADD_TO_CART_TYPES = ("add_to_cart",)
PURCHASE_TYPES = ("purchase",)


@dataclass
class ArmMetrics:
    arm: str
    version: int | None
    lists: int = 0  # recommendation lists shown (first pages)
    clicked_lists: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    requests: int = 0
    errors: int = 0
    model_calls: int = 0
    model_us: int = 0
    shadow_overlap_milli: int = 0

    @property
    def ctr(self) -> float:
        return self.clicked_lists / self.lists if self.lists else 0.0

    @property
    def add_to_cart_rate(self) -> float:
        return self.add_to_carts / self.lists if self.lists else 0.0

    @property
    def conversion(self) -> float:
        return self.purchases / self.lists if self.lists else 0.0

    @property
    def revenue_per_1000(self) -> float:
        return 1000 * self.revenue / self.lists if self.lists else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float:
        return self.model_us / self.model_calls / 1000 if self.model_calls else 0.0

    @property
    def shadow_overlap(self) -> float:
        return self.shadow_overlap_milli / 1000 / self.requests if self.requests else 0.0

    def as_dict(self) -> dict:
        return {
            "arm": self.arm,
            "version": self.version,
            "lists": self.lists,
            "clicks": self.clicks,
            "ctr": round(self.ctr, 5),
            "add_to_cart_rate": round(self.add_to_cart_rate, 5),
            "conversion": round(self.conversion, 5),
            "revenue_per_1000": round(self.revenue_per_1000, 2),
            "requests": self.requests,
            "error_rate": round(self.error_rate, 5),
            "mean_latency_ms": round(self.mean_latency_ms, 3),
            **({"shadow_overlap": round(self.shadow_overlap, 4)} if self.arm == SHADOW else {}),
        }


@dataclass(frozen=True)
class Significance:
    """Two-proportion z-test of the candidate's CTR against the stable arm's."""

    z: float
    p_value: float
    significant: bool
    verdict: str


def ctr_significance(stable: ArmMetrics, candidate: ArmMetrics, alpha: float = 0.05):
    n1, n2 = stable.lists, candidate.lists
    if n1 < 30 or n2 < 30:
        return Significance(0.0, 1.0, False, "not enough lists yet (30 per arm)")
    p1, p2 = stable.ctr, candidate.ctr
    pooled = (stable.clicked_lists + candidate.clicked_lists) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:
        return Significance(0.0, 1.0, False, "no difference (no variance)")
    z = (p2 - p1) / spread
    p_value = math.erfc(abs(z) / math.sqrt(2))
    significant = p_value < alpha
    if not significant:
        verdict = f"no significant difference (p={p_value:.3f})"
    else:
        verdict = f"candidate {'better' if z > 0 else 'worse'} (p={p_value:.3g})"
    return Significance(z, p_value, significant, verdict)


@dataclass
class ExperimentReport:
    experiment: Experiment
    arms: dict[str, ArmMetrics]
    series: dict[str, list[tuple[datetime, ArmMetrics]]] = field(default_factory=dict)
    significance: Significance | None = None


def _bucket_seconds(span: timedelta) -> int:
    for seconds in (300, 900, 3600, 6 * 3600, 86400):
        if span.total_seconds() / seconds <= 48:
            return seconds
    return 86400


def experiment_report(
    experiment: Experiment, *, since: datetime | None = None, until: datetime | None = None
) -> ExperimentReport:
    """Metrics per arm over the experiment (or `since`..`until`): lists shown from impressions,
    clicks, add-to-carts, purchases and revenue from events carrying their recommendation ids,
    requests, errors and latency from the serving counters; and the same per time bucket."""
    from core.events.models import Event
    from core.recommendations.models import Impression

    start = since or experiment.started_at
    end = until or experiment.ended_at or timezone.now()
    stable_number = experiment.stable_version.number
    candidate_number = experiment.candidate_version.number
    candidate_arm = SHADOW if experiment.mode == ExperimentMode.SHADOW else CANARY
    by_version = {stable_number: STABLE, candidate_number: candidate_arm}
    bucket = _bucket_seconds(end - start)

    def bucket_of(moment: datetime) -> int:
        return int(moment.timestamp() // bucket * bucket)

    arms = {
        STABLE: ArmMetrics(STABLE, stable_number),
        candidate_arm: ArmMetrics(candidate_arm, candidate_number),
    }
    series: dict[str, dict[int, ArmMetrics]] = {arm: {} for arm in arms}

    def slot(arm: str, moment_bucket: int) -> ArmMetrics:
        return series[arm].setdefault(moment_bucket, ArmMetrics(arm, arms[arm].version))

    lists: dict[str, tuple[str, int]] = {}
    impressions = Impression.objects.filter(
        surface="user",
        page=1,
        model_name=experiment.model.name,
        model_version__in=[v for v in by_version if v is not None],
        created_at__gte=start,
        created_at__lt=end,
    ).values_list("recommendation_id", "model_version", "created_at")
    for recommendation_id, version, created_at in impressions.iterator(20_000):
        arm = by_version[version]
        moment = bucket_of(created_at)
        lists[recommendation_id] = (arm, moment)
        for metrics in (arms[arm], slot(arm, moment)):
            metrics.lists += 1
    types = CLICK_TYPES + ADD_TO_CART_TYPES + PURCHASE_TYPES
    clicked: set[str] = set()
    events = Event.objects.filter(
        timestamp__gte=start, recommendation_id__isnull=False, type__in=types
    ).values_list("recommendation_id", "type", "value")
    for event_list_id, event_type, value in events.iterator(20_000):
        found = lists.get(event_list_id) if event_list_id else None
        if found is None or event_list_id is None:
            continue
        arm, moment = found
        for metrics in (arms[arm], slot(arm, moment)):
            if event_type in CLICK_TYPES:
                metrics.clicks += 1
                if event_list_id not in clicked:
                    metrics.clicked_lists += 1
            elif event_type in ADD_TO_CART_TYPES:
                metrics.add_to_carts += 1
            else:
                metrics.purchases += 1
                metrics.revenue += float(value or 0.0)
        if event_type in CLICK_TYPES:
            clicked.add(event_list_id)
    counters = arm_stats.read(experiment.pk, arms, start.timestamp(), end.timestamp())
    for arm, per_bucket in counters.items():
        for bucket_start, totals in per_bucket.items():
            moment = bucket_start // bucket * bucket
            for metrics in (arms[arm], slot(arm, moment)):
                for name, value in totals.items():
                    setattr(metrics, name, getattr(metrics, name) + value)
    report = ExperimentReport(
        experiment=experiment,
        arms=arms,
        series={
            arm: [
                (datetime.fromtimestamp(moment, tz=timezone.get_current_timezone()), metrics)
                for moment, metrics in sorted(per.items())
            ]
            for arm, per in series.items()
        },
    )
    if experiment.mode == ExperimentMode.CANARY:
        report.significance = ctr_significance(arms[STABLE], arms[CANARY])
    return report


@dataclass(frozen=True)
class GuardrailVerdict:
    breached: bool
    reasons: tuple[str, ...]
    candidate: ArmMetrics
    stable: ArmMetrics


def guardrail_verdict(experiment: Experiment, *, now: datetime | None = None) -> GuardrailVerdict:
    """Does the canary break a guardrail over the last REGISTRY_GUARDRAIL_WINDOW_SECONDS?"""
    now = now or timezone.now()
    since = max(
        experiment.started_at, now - timedelta(seconds=settings.REGISTRY_GUARDRAIL_WINDOW_SECONDS)
    )
    report = experiment_report(experiment, since=since, until=now)
    stable = report.arms[STABLE]
    candidate = report.arms[SHADOW if experiment.mode == ExperimentMode.SHADOW else CANARY]
    reasons = []
    if candidate.requests and candidate.error_rate > settings.REGISTRY_GUARDRAIL_MAX_ERROR_RATE:
        reasons.append(
            f"error rate {candidate.error_rate:.1%} > "
            f"{settings.REGISTRY_GUARDRAIL_MAX_ERROR_RATE:.1%}"
        )
    if (
        candidate.model_calls >= 20
        and stable.model_calls >= 20
        and candidate.mean_latency_ms
        > stable.mean_latency_ms * settings.REGISTRY_GUARDRAIL_MAX_LATENCY_RATIO
    ):
        reasons.append(
            f"mean latency {candidate.mean_latency_ms:.1f} ms > "
            f"{settings.REGISTRY_GUARDRAIL_MAX_LATENCY_RATIO:g} x stable "
            f"{stable.mean_latency_ms:.1f} ms"
        )
    minimum = settings.REGISTRY_GUARDRAIL_MIN_IMPRESSIONS
    if (
        experiment.mode == ExperimentMode.CANARY
        and candidate.lists >= minimum
        and stable.lists >= minimum
        and stable.ctr > 0
        and candidate.ctr < stable.ctr * (1 - settings.REGISTRY_GUARDRAIL_MAX_CTR_DROP)
    ):
        reasons.append(
            f"CTR {candidate.ctr:.2%} below stable {stable.ctr:.2%} by more than "
            f"{settings.REGISTRY_GUARDRAIL_MAX_CTR_DROP:.0%}"
        )
    return GuardrailVerdict(bool(reasons), tuple(reasons), candidate, stable)


def model_versions(*, name: str):
    return (
        ModelVersion.objects.filter(model__name=name)
        .select_related("model")
        .order_by("-number", "-created_at")
    )
