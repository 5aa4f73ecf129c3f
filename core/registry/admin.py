"""The registry in the admin: push a version (upload form), deploy, promote, roll back and stop
experiments (actions), and an experiment's metrics per arm with charts."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from . import charts, selectors, services
from .models import (
    AuditEntry,
    BusinessRule,
    Experiment,
    ExperimentStatus,
    ModelVersion,
    RegisteredModel,
    VersionStatus,
)


@admin.register(BusinessRule)
class BusinessRuleAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "kind",
        "category",
        "position",
        "factor",
        "starts_at",
        "ends_at",
        "enabled",
    ]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "category"]
    list_editable = ["enabled"]


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


class PushForm(forms.Form):
    name = forms.RegexField(
        regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", initial=lambda: settings.MODEL_NAME
    )
    archive = forms.FileField(help_text="A SavedModel as .tar.gz, .tar or .zip.")
    force = forms.BooleanField(
        required=False, help_text="Accept it even if the offline gate finds it worse than stable."
    )


def _run_for_each_model(request, queryset, action, verb: str, admin_site) -> None:
    for model in queryset:
        try:
            message = action(model.name)
        except services.RegistryError as error:
            admin_site.message_user(
                request, f"{model.name}: {verb} refused: {error}", messages.ERROR
            )
        else:
            admin_site.message_user(request, f"{model.name}: {message}", messages.SUCCESS)


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "stable", "experiment", "created_at"]
    actions = ["promote", "rollback", "stop_experiment"]
    change_list_template = "admin/registry/registeredmodel/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="stable version")
    def stable(self, obj: RegisteredModel):
        version = obj.versions.filter(status=VersionStatus.STABLE).first()
        return version.number if version else "-"

    @admin.display(description="running experiment")
    def experiment(self, obj: RegisteredModel):
        running = obj.experiments.filter(status=ExperimentStatus.RUNNING).first()
        if running is None:
            return "-"
        url = reverse("admin:registry_experiment_report", args=[running.pk])
        return format_html('<a href="{}">{}</a>', url, str(running))

    def get_urls(self):
        return [
            path("push/", self.admin_site.admin_view(self.push_view), name="registry_push"),
            *super().get_urls(),
        ]

    def push_view(self, request: HttpRequest) -> HttpResponse:
        from .tasks import validate_version_task

        form = PushForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                version = services.model_version_push(
                    name=form.cleaned_data["name"],
                    archive=form.cleaned_data["archive"],
                    pushed_by=_actor(request),
                    force=form.cleaned_data["force"],
                )
            except services.RegistryError as error:
                form.add_error("archive", str(error))
            else:
                transaction.on_commit(lambda: validate_version_task.delay(version.pk))
                self.message_user(
                    request,
                    f"Pushed (id {version.pk}); a worker validates it now. Its status and "
                    "reason appear in the version list.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:registry_modelversion_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Push a model version",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/registry/push.html", context)

    @admin.action(description="Promote the canary to stable")
    def promote(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        _run_for_each_model(
            request,
            queryset,
            lambda name: services.model_promote(name=name, actor=_actor(request)),
            "promote",
            self,
        )

    @admin.action(description="Roll back stable to the previous version")
    def rollback(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        _run_for_each_model(
            request,
            queryset,
            lambda name: services.model_rollback(name=name, actor=_actor(request)),
            "rollback",
            self,
        )

    @admin.action(description="Stop the running experiment")
    def stop_experiment(self, request: HttpRequest, queryset: QuerySet[RegisteredModel]) -> None:
        _run_for_each_model(
            request,
            queryset,
            lambda name: services.experiment_stop(name=name, actor=_actor(request)),
            "stop",
            self,
        )


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "number",
        "status",
        "status_reason_short",
        "gate",
        "source",
        "pushed_by",
        "created_at",
    ]
    list_filter = ["model", "status", "source"]
    search_fields = ["checksum", "pushed_by", "status_reason"]
    actions = ["deploy_canary", "deploy_shadow", "deploy_stable"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions arrive by push (see the upload form) or training

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None):
        extra = {"push_url": reverse("admin:registry_push"), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)

    @admin.display(description="reason")
    def status_reason_short(self, obj: ModelVersion) -> str:
        return obj.status_reason[:120]

    @admin.display(description="offline gate")
    def gate(self, obj: ModelVersion) -> str:
        return str(obj.offline_metrics.get("gate", "-"))

    def _deploy(self, request, queryset, mode: str) -> None:
        for version in queryset.select_related("model"):
            if version.number is None:
                self.message_user(request, f"{version}: not validated", messages.ERROR)
                continue
            try:
                message = services.model_version_deploy(
                    name=version.model.name, number=version.number, mode=mode, actor=_actor(request)
                )
            except services.RegistryError as error:
                self.message_user(request, f"{version}: refused: {error}", messages.ERROR)
            else:
                self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Deploy as canary (REGISTRY_CANARY_PERCENT of shoppers)")
    def deploy_canary(self, request, queryset) -> None:
        self._deploy(request, queryset, "canary")

    @admin.action(description="Deploy in shadow (scores live requests, shown to nobody)")
    def deploy_shadow(self, request, queryset) -> None:
        self._deploy(request, queryset, "shadow")

    @admin.action(description="Deploy as the model's first stable version")
    def deploy_stable(self, request, queryset) -> None:
        self._deploy(request, queryset, "stable")


def _metric_rows(report: selectors.ExperimentReport) -> list[dict]:
    rows = []
    for label, attribute, fmt in (
        ("Lists shown", "lists", "{:,.0f}"),
        ("CTR", "ctr", "{:.2%}"),
        ("Add-to-cart rate", "add_to_cart_rate", "{:.2%}"),
        ("Conversion", "conversion", "{:.2%}"),
        ("Revenue per 1,000 lists", "revenue_per_1000", "{:,.2f}"),
        ("Model requests", "requests", "{:,.0f}"),
        ("Error rate", "error_rate", "{:.2%}"),
        ("Mean model latency (ms)", "mean_latency_ms", "{:.2f}"),
    ):
        rows.append(
            {
                "label": label,
                "values": [fmt.format(getattr(arm, attribute)) for arm in report.arms.values()],
            }
        )
    return rows


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "mode",
        "candidate_version",
        "stable_version",
        "traffic_percent",
        "status",
        "started_at",
        "ended_at",
        "report_link",
    ]
    list_filter = ["model", "status", "mode"]
    readonly_fields = [f.name for f in Experiment._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="metrics")
    def report_link(self, obj: Experiment):
        url = reverse("admin:registry_experiment_report", args=[obj.pk])
        return format_html('<a href="{}">metrics per arm</a>', url)

    def get_urls(self):
        return [
            path(
                "<int:experiment_id>/report/",
                self.admin_site.admin_view(self.report_view),
                name="registry_experiment_report",
            ),
            *super().get_urls(),
        ]

    def report_view(self, request: HttpRequest, experiment_id: int) -> HttpResponse:
        experiment = get_object_or_404(
            Experiment.objects.select_related("model", "stable_version", "candidate_version"),
            pk=experiment_id,
        )
        report = selectors.experiment_report(experiment)
        svg = []
        for title, attribute, percent in (
            ("CTR", "ctr", True),
            ("Conversion", "conversion", True),
            ("Revenue per 1,000 lists", "revenue_per_1000", False),
            ("Error rate", "error_rate", True),
            ("Mean model latency (ms)", "mean_latency_ms", False),
        ):
            series = {
                arm: [(moment, getattr(metrics, attribute)) for moment, metrics in points]
                for arm, points in report.series.items()
            }
            svg.append(mark_safe(charts.line_chart(title, series, percent=percent)))  # noqa: S308 (numbers and escaped text)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Experiment: {experiment}",
            "experiment": experiment,
            "arms": list(report.arms.values()),
            "rows": _metric_rows(report),
            "significance": report.significance,
            "charts": svg,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/registry/experiment_report.html", context)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "model", "action", "version", "actor", "message"]
    list_filter = ["model", "action"]
    search_fields = ["message", "actor"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
