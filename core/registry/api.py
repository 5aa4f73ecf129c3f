"""HTTP for data scientists: push a SavedModel archive, follow its validation, deploy it as a
canary or shadow, watch the experiment, promote or roll back. Scope `models:write`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.system.exceptions import PayloadTooLarge, ServiceUnavailable
from core.system.parsers import OrjsonParser
from core.system.scopes import MODELS_WRITE

from . import selectors, services
from .models import Experiment, ExperimentStatus, ModelVersion, RegisteredModel, VersionStatus


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the model's current state."
    default_code = "conflict"


class RawArchiveParser(BaseParser):
    """A push whose body is the archive itself (`curl --data-binary @model.tar.gz`)."""

    media_type = "application/*"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        return {"archive": stream}


def _actor(request: Request) -> str:
    key = request.user
    return f"api-key:{getattr(key, 'name', '?')} ({getattr(key, 'prefix', '?')})"


def _raise(error: services.RegistryError) -> NoReturn:
    message = str(error)
    if isinstance(error, services.UnknownModel):
        raise exceptions.NotFound(message) from error
    if isinstance(error, services.TransitionRefused):
        raise Conflict(message, code="transition_refused") from error
    if isinstance(error, services.DeploymentFailed):
        raise ServiceUnavailable(
            f"The model server did not take the change; nothing changed: {message}",
            code="deployment_failed",
        ) from error
    raise exceptions.ValidationError({"archive": [message]}) from error


def _model(name: str) -> RegisteredModel:
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise exceptions.NotFound(f"No model named {name!r}.")
    return model


class VersionOut(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    url = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "number",
            "status",
            "status_reason",
            "source",
            "checksum",
            "archive_bytes",
            "force",
            "model_card",
            "offline_metrics",
            "pushed_by",
            "created_at",
            "validated_at",
            "stable_since",
            "rolled_back_at",
            "url",
        ]

    def get_url(self, version: ModelVersion) -> str:
        prefix = f"/api/v1/models/{version.model.name}"
        if version.number is not None:
            return f"{prefix}/versions/{version.number}"
        return f"{prefix}/pushes/{version.pk}"


class ExperimentOut(serializers.ModelSerializer):
    stable_version = serializers.IntegerField(source="stable_version.number")
    candidate_version = serializers.IntegerField(source="candidate_version.number")

    class Meta:
        model = Experiment
        fields = [
            "id",
            "mode",
            "status",
            "stable_version",
            "candidate_version",
            "traffic_percent",
            "started_by",
            "started_at",
            "ended_at",
            "end_reason",
            "guardrail_breach_since",
            "guardrail_breach",
        ]


def _experiment_body(experiment: Experiment) -> dict:
    report = selectors.experiment_report(experiment)
    body = ExperimentOut(experiment).data
    body["arms"] = [metrics.as_dict() for metrics in report.arms.values()]
    if report.significance is not None:
        body["significance"] = {
            "z": round(report.significance.z, 4),
            "p_value": round(report.significance.p_value, 6),
            "significant": report.significance.significant,
            "verdict": report.significance.verdict,
        }
    return body


class ModelSummaryOut(serializers.Serializer):
    name = serializers.CharField()
    stable_version = serializers.IntegerField(allow_null=True)
    experiment = ExperimentOut(allow_null=True)
    versions = serializers.IntegerField()


class ModelListOut(serializers.Serializer):
    models = ModelSummaryOut(many=True)


class ActionOut(serializers.Serializer):
    message = serializers.CharField()
    model = ModelSummaryOut()


class VersionListOut(serializers.Serializer):
    versions = VersionOut(many=True)


class ModelListApi(APIView):
    """Registered models with their stable version and running experiment."""

    required_scope = MODELS_WRITE

    @extend_schema(responses=ModelListOut, operation_id="models_list")
    def get(self, request: Request) -> Response:
        return Response({"models": [_model_summary(m) for m in RegisteredModel.objects.all()]})


def _model_summary(model: RegisteredModel) -> dict:
    stable = model.versions.filter(status=VersionStatus.STABLE).first()
    experiment = model.experiments.filter(status=ExperimentStatus.RUNNING).first()
    return {
        "name": model.name,
        "stable_version": stable.number if stable else None,
        "experiment": ExperimentOut(experiment).data if experiment else None,
        "versions": model.versions.count(),
    }


class ModelDetailApi(APIView):
    required_scope = MODELS_WRITE

    @extend_schema(responses=ModelSummaryOut, operation_id="model_detail")
    def get(self, request: Request, name: str) -> Response:
        return Response(_model_summary(_model(name)))


class VersionListApi(APIView):
    """GET: every version of the model, newest first. POST: push a SavedModel archive (tar,
    tar.gz or zip; multipart field `archive`, or the raw body), `force=true` to pass the offline
    gate. Answers 202: validation runs in a worker; follow the version's `url`."""

    required_scope = MODELS_WRITE
    parser_classes = [MultiPartParser, RawArchiveParser, OrjsonParser]

    @extend_schema(responses=VersionListOut, operation_id="model_versions_list")
    def get(self, request: Request, name: str) -> Response:
        versions = selectors.model_versions(name=name)
        return Response({"versions": VersionOut(versions, many=True).data})

    @extend_schema(request=None, responses={202: VersionOut}, operation_id="model_version_push")
    def post(self, request: Request, name: str) -> Response:
        from django.db import transaction

        from .tasks import validate_version_task

        length = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = settings.REGISTRY_MAX_ARCHIVE_BYTES
        if length > limit + 64 * 1024:  # multipart framing on top of the archive
            raise PayloadTooLarge(f"Archives are limited to {limit} bytes.")
        data = request.data if isinstance(request.data, Mapping) else {}
        archive = data.get("archive")
        if archive is None:
            raise exceptions.ValidationError(
                {"archive": ["Send the archive as multipart field 'archive' or as the body."]}
            )
        force = str(request.query_params.get("force") or data.get("force") or "")
        try:
            version = services.model_version_push(
                name=name,
                archive=archive,
                pushed_by=_actor(request),
                force=force.lower() in ("1", "true", "yes"),
            )
        except services.PushRefused as error:
            if "larger than" in str(error):
                raise PayloadTooLarge(str(error)) from error
            _raise(error)
        transaction.on_commit(lambda: validate_version_task.delay(version.pk))
        body = VersionOut(version).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


class VersionDetailApi(APIView):
    required_scope = MODELS_WRITE

    @extend_schema(responses=VersionOut, operation_id="model_version_detail")
    def get(self, request: Request, name: str, number: int) -> Response:
        version = ModelVersion.objects.filter(model__name=name, number=number).first()
        if version is None:
            raise exceptions.NotFound(f"Model {name!r} has no version {number}.")
        return Response(VersionOut(version).data)


class PushDetailApi(APIView):
    """A push by its id: where to follow a version before validation gives it a number."""

    required_scope = MODELS_WRITE

    @extend_schema(responses=VersionOut, operation_id="model_push_detail")
    def get(self, request: Request, name: str, push_id: int) -> Response:
        version = ModelVersion.objects.filter(model__name=name, pk=push_id).first()
        if version is None:
            raise exceptions.NotFound(f"Model {name!r} has no push {push_id}.")
        return Response(VersionOut(version).data)


class DeployApi(APIView):
    """Serve a ready version: `stable` (the model's first), `canary` (a share of shoppers) or
    `shadow` (scores live requests, shown to nobody)."""

    required_scope = MODELS_WRITE

    class DeployInSerializer(serializers.Serializer):
        mode = serializers.ChoiceField(choices=["canary", "shadow", "stable"], default="canary")
        traffic_percent = serializers.FloatField(
            min_value=0.01, max_value=100, required=False, allow_null=True
        )

    @extend_schema(
        request=DeployInSerializer, responses=ActionOut, operation_id="model_version_deploy"
    )
    def post(self, request: Request, name: str, number: int) -> Response:
        body = self.DeployInSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        try:
            message = services.model_version_deploy(
                name=name,
                number=number,
                mode=body.validated_data["mode"],
                traffic_percent=body.validated_data.get("traffic_percent"),
                actor=_actor(request),
            )
        except services.RegistryError as error:
            _raise(error)
        return Response({"message": message, "model": _model_summary(_model(name))})


class _ModelAction(APIView):
    required_scope = MODELS_WRITE

    class ReasonInSerializer(serializers.Serializer):
        reason = serializers.CharField(required=False, allow_blank=True, max_length=1000)

    def act(self, name: str, actor: str, reason: str) -> str:
        raise NotImplementedError

    @extend_schema(request=ReasonInSerializer, responses=ActionOut)
    def post(self, request: Request, name: str) -> Response:
        body = self.ReasonInSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        try:
            message = self.act(name, _actor(request), body.validated_data.get("reason", ""))
        except services.RegistryError as error:
            _raise(error)
        return Response({"message": message, "model": _model_summary(_model(name))})


class PromoteApi(_ModelAction):
    """The running canary (or shadow) version becomes stable."""

    def act(self, name: str, actor: str, reason: str) -> str:
        return services.model_promote(name=name, actor=actor)


class RollbackApi(_ModelAction):
    """Stable goes back to the version that was stable before it."""

    def act(self, name: str, actor: str, reason: str) -> str:
        return services.model_rollback(name=name, actor=actor, reason=reason)


class ExperimentStopApi(_ModelAction):
    """End the running experiment; its candidate returns to ready."""

    def act(self, name: str, actor: str, reason: str) -> str:
        return services.experiment_stop(name=name, actor=actor, reason=reason)


class ExperimentApi(APIView):
    """The running (else the latest) experiment, with online metrics per arm."""

    required_scope = MODELS_WRITE

    @extend_schema(responses=OpenApiTypes.OBJECT, operation_id="model_experiment")
    def get(self, request: Request, name: str) -> Response:
        model = _model(name)
        experiment = (
            model.experiments.select_related("stable_version", "candidate_version", "model")
            .order_by("-started_at")
            .first()
        )
        if experiment is None:
            raise exceptions.NotFound(f"Model {name!r} has had no experiment.")
        return Response(_experiment_body(experiment))


class AuditApi(APIView):
    required_scope = MODELS_WRITE

    @extend_schema(responses=OpenApiTypes.OBJECT, operation_id="model_audit")
    def get(self, request: Request, name: str) -> Response:
        model = _model(name)
        entries = model.audit.select_related("version")[:200]
        return Response(
            {
                "entries": [
                    {
                        "at": entry.created_at,
                        "action": entry.action,
                        "actor": entry.actor,
                        "version": entry.version.number if entry.version else None,
                        "message": entry.message,
                    }
                    for entry in entries
                ]
            }
        )
