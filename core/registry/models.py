from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from core.recommendations.ranking import RuleKind


class BusinessRule(models.Model):
    """A merchandiser's rule applied to every recommendation list while it is in force: pin an
    item to a position, boost or bury items, or exclude them, by item id and/or category subtree."""

    name = models.CharField(max_length=200)
    kind = models.CharField(
        max_length=16, choices=[(kind.value, kind.name.title()) for kind in RuleKind]
    )
    item_ids = models.JSONField(
        default=list, blank=True, help_text="Storefront item ids the rule targets."
    )
    category = models.CharField(
        max_length=500, blank=True, default="", help_text="Category subtree, e.g. 'shoes/running'."
    )
    factor = models.FloatField(default=2.0, help_text="Boost: score multiplier (> 1).")
    position = models.PositiveSmallIntegerField(default=1, help_text="Pin: 1-based position.")
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["kind", "position", "name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__isnull=True)
                | models.Q(starts_at__isnull=True)
                | models.Q(ends_at__gt=models.F("starts_at")),
                name="business_rule_ends_after_start",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}"

    def clean(self) -> None:
        if not isinstance(self.item_ids, list) or not all(
            isinstance(item_id, str) and item_id for item_id in self.item_ids
        ):
            raise ValidationError({"item_ids": "A list of non-empty item id strings."})
        if len(self.item_ids) > 1000:
            raise ValidationError({"item_ids": "At most 1000 items per rule."})
        if not self.item_ids and not self.category:
            raise ValidationError("Target at least one item id or a category.")
        if self.kind == RuleKind.PIN and not self.item_ids:
            raise ValidationError({"item_ids": "A pin names the items it pins."})
        if self.kind == RuleKind.BOOST and not self.factor > 1:
            raise ValidationError({"factor": "A boost multiplies scores by more than 1."})
        if self.kind == RuleKind.PIN and self.position < 1:
            raise ValidationError({"position": "Positions start at 1."})
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValidationError({"ends_at": "The end must come after the start."})


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class RegisteredModel(models.Model):
    """A model name in the repository (`<MODEL_REPOSITORY>/<name>/<version>/`)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class VersionStatus(models.TextChoices):
    UPLOADED = "uploaded"
    VALIDATING = "validating"
    READY = "ready"
    SHADOW = "shadow"
    CANARY = "canary"
    STABLE = "stable"
    RETIRED = "retired"
    FAILED = "failed"


class ModelVersion(models.Model):
    """One pushed (or trained) SavedModel. `number` is its folder in the repository, given when
    it passes validation and is renamed into place; failed pushes never get one."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=VersionStatus.choices, default=VersionStatus.UPLOADED
    )
    status_reason = models.TextField(blank=True, default="")
    source = models.CharField(max_length=16, default="push")  # push, train
    checksum = models.CharField(max_length=64, blank=True, default="")  # sha256 of the archive
    archive_bytes = models.BigIntegerField(default=0)
    upload_path = models.CharField(max_length=500, blank=True, default="")
    force = models.BooleanField(default=False, help_text="Pushed past the offline gate.")
    model_card = models.JSONField(default=dict, blank=True)
    offline_metrics = models.JSONField(default=dict, blank=True)
    pushed_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    stable_since = models.DateTimeField(null=True, blank=True)
    rolled_back_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["model", "-number", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "number"], name="registry_version_number_unique"
            ),
            models.UniqueConstraint(
                fields=["model"],
                condition=models.Q(status="stable"),
                name="registry_one_stable_per_model",
            ),
            models.UniqueConstraint(
                fields=["model"],
                condition=models.Q(status__in=["canary", "shadow"]),
                name="registry_one_candidate_per_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number or '?'} ({self.status})"


class ExperimentMode(models.TextChoices):
    CANARY = "canary"  # a share of shoppers sees the candidate
    SHADOW = "shadow"  # the candidate scores live requests, nobody sees its answers


class ExperimentStatus(models.TextChoices):
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"


class Experiment(models.Model):
    """Stable against a candidate version. Shoppers are split by a hash of (salt, user id), so a
    shopper stays in one arm for the experiment's life."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="experiments")
    mode = models.CharField(max_length=16, choices=ExperimentMode.choices)
    stable_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    candidate_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="experiments"
    )
    traffic_percent = models.FloatField(help_text="Share of shoppers in the candidate arm.")
    salt = models.CharField(max_length=32)
    status = models.CharField(
        max_length=16, choices=ExperimentStatus.choices, default=ExperimentStatus.RUNNING
    )
    end_reason = models.TextField(blank=True, default="")
    started_by = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    guardrail_breach_since = models.DateTimeField(null=True, blank=True)
    guardrail_breach = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["model"],
                condition=models.Q(status="running"),
                name="registry_one_running_experiment_per_model",
            ),
            models.CheckConstraint(
                condition=models.Q(traffic_percent__gte=0) & models.Q(traffic_percent__lte=100),
                name="registry_experiment_percent_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}: v{self.candidate_version.number} {self.mode} ({self.status})"


class AuditAction(models.TextChoices):
    PUSH = "push"
    VALIDATED = "validated"
    FAILED = "failed"
    DEPLOY = "deploy"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    AUTO_ROLLBACK = "auto_rollback"
    STOP = "stop"
    REFUSED = "refused"


class AuditEntry(models.Model):
    """Every push, validation outcome, deployment, promotion and rollback, with who did it.
    Refused requests (a bad transition, a failed deployment) are recorded too."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="audit")
    version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit"
    )
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    actor = models.CharField(max_length=200, blank=True, default="")
    message = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action} {self.model.name}"
