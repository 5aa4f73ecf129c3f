"""The model lifecycle: train, push, validate, deploy (stable, canary, shadow), promote, roll back.

Every change of what is served goes through `_change_serving`: under one lock, the registry's
rows change inside a transaction, the model server is brought to the new state
(`deployment.apply`), and only then does the transaction commit. A model server that refuses
leaves the registry unchanged and gets its previous config back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core.catalog.models import Item
from core.events.models import Event

from . import deployment
from .archives import ArchiveLimits, ArchiveRefused, remove_tree, sha256_of, unpack_saved_model
from .models import (
    MODEL_NAME_PATTERN,
    AuditAction,
    AuditEntry,
    Experiment,
    ExperimentMode,
    ExperimentStatus,
    ModelVersion,
    RegisteredModel,
    VersionStatus,
)

logger = logging.getLogger(__name__)


class TrainingRefused(ValueError):
    """The stored events cannot train a model (too few, one user, one item...)."""


@dataclass(frozen=True)
class TrainingOutcome:
    version: int
    version_dir: str
    events: int
    train_seconds: float
    table: str


def _training_columns(since: datetime | None) -> dict[str, np.ndarray]:
    """Events as columns, with storefront item ids (the model's vocabulary) and our user ids."""
    weights = settings.EVENT_TYPE_WEIGHTS
    types = [event_type for event_type, weight in weights.items() if weight > 0]
    queryset = Event.objects.filter(type__in=types, item__isnull=False)
    if since is not None:
        queryset = queryset.filter(timestamp__gte=since)
    rows = list(queryset.values_list("user_id", "item_id", "type", "timestamp").iterator(50_000))
    if not rows:
        raise TrainingRefused("no stored events to train on")
    users, items, kinds, stamps = zip(*rows, strict=True)
    external = dict(Item.objects.filter(id__in=set(items)).values_list("id", "external_id"))
    return {
        "user_ids": np.asarray([str(user) for user in users], dtype=object),
        "item_ids": np.asarray([external[item] for item in items], dtype=object),
        "types": np.asarray(kinds, dtype=object),
        "timestamps": np.asarray([stamp.timestamp() for stamp in stamps], dtype=np.float64),
    }


def model_train(
    *, since: datetime | None = None, evaluate: bool = True, tune: bool = True
) -> TrainingOutcome:
    """Train on stored events with the configured event weights, evaluate against the baselines,
    and export the next version into the model repository (atomically)."""
    # TensorFlow loads here, in the worker or command that trains, never in a web process.
    from ml.interactions import InvalidEventsError, interactions_from_columns
    from ml.train import TrainParams, format_table, train_and_export

    columns = _training_columns(since)
    try:
        interactions = interactions_from_columns(**columns, weights=settings.EVENT_TYPE_WEIGHTS)
        result = train_and_export(
            interactions,
            repository=settings.MODEL_REPOSITORY,
            name=settings.MODEL_NAME,
            params=TrainParams(
                evaluate=evaluate, tune=tune, event_weights=dict(settings.EVENT_TYPE_WEIGHTS)
            ),
        )
    except InvalidEventsError as exc:
        raise TrainingRefused(str(exc)) from exc
    assert result.version is not None and result.version_dir is not None
    logger.info("trained model version %s on %d events", result.version, len(interactions))
    model_version_register_trained(
        name=settings.MODEL_NAME,
        number=result.version,
        version_dir=str(result.version_dir),
        metrics=result.metrics or {},
    )
    return TrainingOutcome(
        version=result.version,
        version_dir=str(result.version_dir),
        events=len(interactions),
        train_seconds=result.train_seconds,
        table=format_table(result.metrics) if result.metrics else "",
    )


# --- errors ----------------------------------------------------------------------------------


class RegistryError(Exception):
    """A refused registry request; `code` is the API's error code."""

    code = "registry_error"


class PushRefused(RegistryError):
    code = "push_refused"


class TransitionRefused(RegistryError):
    """The version or model is not in a state that allows the change (nothing was changed)."""

    code = "transition_refused"


class UnknownModel(RegistryError):
    code = "not_found"


class DeploymentFailed(RegistryError):
    """The model server did not take the change; registry and serving are as they were."""

    code = "deployment_failed"


class ValidationFailed(ValueError):
    pass


# --- audit -----------------------------------------------------------------------------------


def audit(
    *,
    model: RegisteredModel,
    action: str,
    actor: str,
    message: str,
    version: ModelVersion | None = None,
    details: dict | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        model=model,
        version=version,
        action=action,
        actor=actor[:200],
        message=message,
        details=details or {},
    )
    logger.info("registry %s %s: %s (%s)", action, model.name, message, actor)
    return entry


# --- push and validation ---------------------------------------------------------------------


def _model_dir(name: str) -> Path:
    return Path(settings.MODEL_REPOSITORY) / name


def _check_name(name: str) -> None:
    if not re.match(MODEL_NAME_PATTERN, name or ""):
        raise PushRefused(
            f"bad model name {name!r}: letters, digits, '.', '_' and '-', starting with a letter "
            "or digit, at most 100 characters"
        )


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_archive_bytes=settings.REGISTRY_MAX_ARCHIVE_BYTES,
        max_unpacked_bytes=settings.REGISTRY_MAX_UNPACKED_BYTES,
        max_members=settings.REGISTRY_MAX_ARCHIVE_MEMBERS,
    )


def _store_upload(source: IO[bytes]) -> Path:
    """Copy the upload to the upload folder (shared with the workers), refusing it as soon as it
    passes the size limit."""
    folder = Path(settings.REGISTRY_UPLOAD_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.archive"
    limit = settings.REGISTRY_MAX_ARCHIVE_BYTES
    written = 0
    try:
        with open(path, "xb") as sink:
            while chunk := source.read(1024 * 1024):
                written += len(chunk)
                if written > limit:
                    raise PushRefused(f"archive larger than {limit} bytes")
                sink.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written == 0:
        path.unlink(missing_ok=True)
        raise PushRefused("archive is empty")
    return path


def model_version_push(
    *, name: str, archive: IO[bytes], pushed_by: str, force: bool = False
) -> ModelVersion:
    """Record a pushed archive as an `uploaded` version. Validation (which needs TensorFlow)
    is separate: `model_version_validate`, run by the worker or the command."""
    _check_name(name)
    path = _store_upload(archive)
    try:
        checksum = sha256_of(path)
        with transaction.atomic():
            model, _ = RegisteredModel.objects.get_or_create(name=name)
            version = ModelVersion.objects.create(
                model=model,
                status=VersionStatus.UPLOADED,
                checksum=checksum,
                archive_bytes=path.stat().st_size,
                upload_path=str(path),
                pushed_by=pushed_by[:200],
                force=force,
            )
            audit(
                model=model,
                version=version,
                action=AuditAction.PUSH,
                actor=pushed_by,
                message=f"pushed {version.archive_bytes} bytes, sha256 {checksum[:12]}"
                + (" (forced past the offline gate)" if force else ""),
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return version


def _sample_histories(limit: int = 8) -> list[list[str]]:
    """Recent shoppers' item ids (storefront ids, the models' vocabulary), for smoke tests."""
    rows = list(
        Event.objects.filter(item__isnull=False)
        .order_by("-id")
        .values_list("user_id", "item_id")[:2000]
    )
    by_user: dict[int, list[int]] = {}
    for user_id, item_id in rows:
        by_user.setdefault(user_id, []).append(item_id)
        if len(by_user) >= limit:
            break
    external = dict(
        Item.objects.filter(id__in={i for items in by_user.values() for i in items}).values_list(
            "id", "external_id"
        )
    )
    histories = [
        [external[i] for i in reversed(items) if i in external] for items in by_user.values()
    ]
    if not any(histories):
        sample = list(Item.objects.order_by("id").values_list("external_id", flat=True)[:5])
        histories = [sample] if sample else []
    return [history for history in histories if history]


def evaluation_cases(*, days: int, max_users: int) -> list:
    """Leave-last-out cases from recent events: each shopper's latest distinct item is the
    target, the items before it (with the configured event weights) the history."""
    from .validation import EvalCase

    weights = settings.EVENT_TYPE_WEIGHTS
    types = [event_type for event_type, weight in weights.items() if weight > 0]
    since = timezone.now() - timedelta(days=days)
    recent = Event.objects.filter(timestamp__gte=since, type__in=types, item__isnull=False)
    # The most recently active shoppers (from the newest events), then only their events: the
    # cost follows max_users, not the storefront's traffic.
    chosen: list[int] = []
    seen: set[int] = set()
    for user_id in recent.order_by("-id").values_list("user_id", flat=True)[: max_users * 50]:
        if user_id not in seen:
            seen.add(user_id)
            chosen.append(user_id)
            if len(chosen) >= max_users:
                break
    rows = (
        recent.filter(user_id__in=chosen)
        .order_by("user_id", "timestamp", "id")
        .values_list("user_id", "item_id", "type")
    )
    per_user: dict[int, list[tuple[int, float]]] = {}
    for user_id, item_id, event_type in rows.iterator(20_000):
        per_user.setdefault(user_id, []).append((item_id, float(weights[event_type])))
    users = sorted(per_user)
    item_ids = {item for user in users for item, _ in per_user[user]}
    external = dict(Item.objects.filter(id__in=item_ids).values_list("id", "external_id"))
    history_length = settings.RECOMMENDATIONS_HISTORY_LENGTH
    cases = []
    for user in users:
        events = [(external[i], w) for i, w in per_user[user] if i in external]
        if len({item for item, _ in events}) < 2:
            continue
        target = events[-1][0]
        before = [(item, w) for item, w in events if item != target][-history_length:]
        if not before:
            continue
        cases.append(
            EvalCase(
                history=tuple(item for item, _ in before),
                weights=tuple(w for _, w in before),
                target=target,
            )
        )
    return cases


def _offline_gate(loaded, model: RegisteredModel, force: bool) -> dict:
    """The challenger's offline metrics beside the stable version's, and the gate's verdict.
    Raises ValidationFailed when the challenger is worse beyond the threshold (unless forced)."""
    from .validation import evaluate, load

    cases = evaluation_cases(
        days=settings.REGISTRY_EVAL_DAYS, max_users=settings.REGISTRY_EVAL_MAX_USERS
    )
    if len(cases) < settings.REGISTRY_EVAL_MIN_USERS:
        return {
            "gate": "skipped",
            "reason": f"{len(cases)} shoppers with a history in the last "
            f"{settings.REGISTRY_EVAL_DAYS} days (at least {settings.REGISTRY_EVAL_MIN_USERS})",
        }
    challenger = evaluate(loaded, cases)
    result: dict = {"challenger": challenger, "gate": "passed"}
    stable = ModelVersion.objects.filter(model=model, status=VersionStatus.STABLE).first()
    if stable is None or stable.number is None:
        result["reason"] = "no stable version to compare with"
        return result
    stable_metrics = evaluate(load(_model_dir(model.name) / str(stable.number)), cases)
    result["stable"] = {"version": stable.number, **stable_metrics}
    floor = stable_metrics["hr@10"] * (1 - settings.REGISTRY_EVAL_MAX_DROP)
    if challenger["hr@10"] < floor:
        verdict = (
            f"HR@10 {challenger['hr@10']:.4f} is below the stable version {stable.number}'s "
            f"{stable_metrics['hr@10']:.4f} by more than "
            f"{settings.REGISTRY_EVAL_MAX_DROP:.0%} ({len(cases)} recent shoppers)"
        )
        if not force:
            raise ValidationFailed(f"offline gate: {verdict}; push with force to override")
        result["gate"] = "forced"
        result["reason"] = verdict
    return result


def _global_lock() -> None:
    """Serialise placements and deployments across processes (PostgreSQL advisory lock for the
    transaction; SQLite serialises writers anyway)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x5E61_5731])


def _next_number(model: RegisteredModel) -> int:
    from ml.export import existing_versions

    on_disk = existing_versions(_model_dir(model.name))
    in_registry = (
        ModelVersion.objects.filter(model=model, number__isnull=False)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    return max([0, *on_disk, in_registry or 0]) + 1


def _place(version: ModelVersion, saved_model_dir: Path, fields: dict) -> ModelVersion:
    """Rename the validated SavedModel into `<repository>/<name>/<next number>` and mark the
    version ready, as one step: the number is taken under the lock, the folder appears whole."""
    model_dir = _model_dir(version.model.name)
    with transaction.atomic():
        _global_lock()
        RegisteredModel.objects.select_for_update().get(pk=version.model_id)
        for _ in range(20):
            number = _next_number(version.model)
            target = model_dir / str(number)
            if target.exists():  # an export outside the registry took it meanwhile
                continue
            os.rename(saved_model_dir, target)
            break
        else:
            raise ValidationFailed(f"no free version number in {model_dir}")
        try:
            ModelVersion.objects.filter(pk=version.pk).update(
                number=number,
                status=VersionStatus.READY,
                status_reason="",
                validated_at=timezone.now(),
                upload_path="",
                **fields,
            )
        except BaseException:
            remove_tree(target)
            raise
    version.refresh_from_db()
    return version


def _fail(version: ModelVersion, reason: str, actor: str = "validation") -> ModelVersion:
    ModelVersion.objects.filter(pk=version.pk).update(
        status=VersionStatus.FAILED, status_reason=reason[:5000], upload_path=""
    )
    version.refresh_from_db()
    audit(
        model=version.model,
        version=version,
        action=AuditAction.FAILED,
        actor=actor,
        message=reason[:2000],
    )
    return version


def _read_model_card(saved_model_dir: Path) -> dict:
    from ml.contract import MODEL_CARD_FILE

    path = saved_model_dir / MODEL_CARD_FILE
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValidationFailed(f"{MODEL_CARD_FILE} is not valid JSON: {error}") from None
    if not isinstance(card, dict):
        raise ValidationFailed(f"{MODEL_CARD_FILE} must hold a JSON object")
    return card


def model_version_validate(*, version_id: int) -> ModelVersion:
    """uploaded -> validating -> ready (numbered, in the repository) or failed (with the reason).

    Safe to run twice: only the run that moves the version from `uploaded` works on it."""
    claimed = ModelVersion.objects.filter(pk=version_id, status=VersionStatus.UPLOADED).update(
        status=VersionStatus.VALIDATING
    )
    version = ModelVersion.objects.select_related("model").get(pk=version_id)
    if not claimed:
        return version
    model_dir = _model_dir(version.model.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".push-{version.pk}-{uuid.uuid4().hex[:8]}"
    upload = Path(version.upload_path) if version.upload_path else None
    try:
        from ml.contract import check_signatures

        from .validation import ModelLoadFailed, load, smoke_test

        if upload is None or not upload.is_file():
            raise ValidationFailed("the uploaded archive is gone (upload folder not shared?)")
        root = unpack_saved_model(upload, staging, archive_limits())
        problems = check_signatures(root)
        if problems:
            raise ValidationFailed("serving contract: " + "; ".join(problems))
        card = _read_model_card(root)
        try:
            loaded = load(root)
        except ModelLoadFailed as error:
            raise ValidationFailed(str(error)) from None
        problems = smoke_test(loaded, _sample_histories())
        if problems:
            raise ValidationFailed("smoke prediction: " + "; ".join(problems))
        metrics = _offline_gate(loaded, version.model, version.force)
        del loaded
        version = _place(version, root, {"model_card": card, "offline_metrics": metrics})
    except (ArchiveRefused, ValidationFailed) as error:
        return _fail(version, str(error))
    except Exception as error:  # a bug or an environment problem: still a clear end state
        logger.exception("validation of version %s crashed", version_id)
        return _fail(version, f"validation crashed: {type(error).__name__}: {error}")
    finally:
        remove_tree(staging)
        if upload is not None:
            upload.unlink(missing_ok=True)
    audit(
        model=version.model,
        version=version,
        action=AuditAction.VALIDATED,
        actor="validation",
        message=f"version {version.number} is ready ({metrics.get('gate')} offline gate)",
        details=metrics,
    )
    return version


def model_version_register_trained(
    *, name: str, number: int, version_dir: str, metrics: dict
) -> ModelVersion:
    """A version `train_model` exported: checked for the contract (no graph load) and recorded
    as ready, or failed with the problems."""
    from ml.contract import check_version_dir

    problems = check_version_dir(version_dir)
    try:
        card = _read_model_card(Path(version_dir))
    except ValidationFailed as error:
        card, problems = {}, [*problems, str(error)]
    with transaction.atomic():
        model, _ = RegisteredModel.objects.get_or_create(name=name)
        version = ModelVersion.objects.create(
            model=model,
            number=number,
            source="train",
            status=VersionStatus.FAILED if problems else VersionStatus.READY,
            status_reason="; ".join(problems),
            model_card=card,
            offline_metrics=json.loads(json.dumps(metrics, default=str)),
            pushed_by="train_model",
            validated_at=None if problems else timezone.now(),
        )
        audit(
            model=model,
            version=version,
            action=AuditAction.FAILED if problems else AuditAction.VALIDATED,
            actor="train_model",
            message=f"trained version {number}" + (f": {'; '.join(problems)}" if problems else ""),
        )
    return version


# --- what is served ----------------------------------------------------------------------------


def _previous_stable(model: RegisteredModel, current: ModelVersion) -> ModelVersion | None:
    """The version that was stable before `current` and was not rolled back."""
    return (
        ModelVersion.objects.filter(
            model=model,
            status=VersionStatus.RETIRED,
            stable_since__isnull=False,
            rolled_back_at__isnull=True,
            number__isnull=False,
        )
        .exclude(pk=current.pk)
        .order_by("-stable_since")
        .first()
    )


def serving_state() -> list[deployment.ServedModel]:
    """What the model server should serve, from the registry's rows (models with a stable)."""
    served = []
    for model in RegisteredModel.objects.order_by("name"):
        stable = ModelVersion.objects.filter(model=model, status=VersionStatus.STABLE).first()
        if stable is None or stable.number is None:
            continue
        candidate = ModelVersion.objects.filter(
            model=model, status__in=[VersionStatus.CANARY, VersionStatus.SHADOW]
        ).first()
        previous = _previous_stable(model, stable)
        served.append(
            deployment.served_model(
                name=model.name,
                stable=stable.number,
                candidate=candidate.number if candidate else None,
                previous=previous.number if previous else None,
            )
        )
    return served


def _serving_changed() -> None:
    from core.recommendations import model_gateway

    from .selectors import serving_plan_cache_clear

    model_gateway.model_generation_bump()
    serving_plan_cache_clear()


def _change_serving(
    name: str, change: Callable[[RegisteredModel], str], *, actor: str, action: str
) -> str:
    """Run `change(model)` (registry writes, returns a message) and bring the model server to
    the new state, atomically: if the server refuses, the writes are rolled back and the server
    gets its previous config. Refusals are audited."""
    try:
        with transaction.atomic():
            _global_lock()
            try:
                model = RegisteredModel.objects.select_for_update().get(name=name)
            except RegisteredModel.DoesNotExist:
                raise UnknownModel(f"no model named {name!r}") from None
            before = serving_state()
            message = change(model)
            after = serving_state()
            if after != before:
                try:
                    deployment.apply(after, before=before)
                except deployment.DeploymentFailed as error:
                    try:
                        deployment.apply(before, before=after)
                    except deployment.DeploymentFailed:
                        logger.exception("could not restore the previous model config")
                    raise DeploymentFailed(str(error)) from error
            audit(model=model, action=action, actor=actor, message=message)
            transaction.on_commit(_serving_changed)
    except (TransitionRefused, DeploymentFailed) as error:
        existing = RegisteredModel.objects.filter(name=name).first()
        if existing is not None:
            audit(
                model=existing,
                action=AuditAction.REFUSED,
                actor=actor,
                message=f"{action} refused: {error}",
            )
        raise
    except IntegrityError as error:  # a concurrent change won the race for a constraint
        raise TransitionRefused(f"{action} conflicts with a concurrent change: {error}") from None
    return message


def _version(model: RegisteredModel, number: int) -> ModelVersion:
    version = ModelVersion.objects.filter(model=model, number=number).first()
    if version is None:
        raise UnknownModel(f"model {model.name!r} has no version {number}")
    return version


def model_version_deploy(
    *,
    name: str,
    number: int,
    mode: str,
    actor: str,
    traffic_percent: float | None = None,
) -> str:
    """`stable`: the first stable version of a model (later ones go through a canary and
    `promote`). `canary`: `traffic_percent` of shoppers see it. `shadow`: it scores live
    requests, nobody sees its answers."""
    if mode not in ("stable", ExperimentMode.CANARY, ExperimentMode.SHADOW):
        raise TransitionRefused(f"unknown mode {mode!r}: stable, canary or shadow")
    percent = settings.REGISTRY_CANARY_PERCENT if traffic_percent is None else traffic_percent
    if not 0 < percent <= 100:
        raise TransitionRefused("traffic_percent must be above 0 and at most 100")

    def change(model: RegisteredModel) -> str:
        version = _version(model, number)
        if version.status not in (VersionStatus.READY, VersionStatus.RETIRED):
            reason = f": {version.status_reason}" if version.status_reason else ""
            raise TransitionRefused(
                f"version {number} is {version.status}{reason}; only a ready (or retired) "
                "version can be deployed"
            )
        stable = ModelVersion.objects.filter(model=model, status=VersionStatus.STABLE).first()
        running = Experiment.objects.filter(model=model, status=ExperimentStatus.RUNNING).first()
        if running is not None:
            raise TransitionRefused(
                f"an experiment with version {running.candidate_version.number} is running: "
                "promote, roll back or stop it first"
            )
        now = timezone.now()
        if mode == "stable":
            if stable is not None:
                raise TransitionRefused(
                    f"version {stable.number} is stable: deploy a canary and promote it"
                )
            ModelVersion.objects.filter(pk=version.pk).update(
                status=VersionStatus.STABLE, stable_since=now, status_reason=""
            )
            return f"version {number} deployed as the first stable version"
        if stable is None:
            raise TransitionRefused(
                f"model {model.name!r} has no stable version yet: deploy one as stable first"
            )
        ModelVersion.objects.filter(pk=version.pk).update(status=mode, status_reason="")
        Experiment.objects.create(
            model=model,
            mode=mode,
            stable_version=stable,
            candidate_version=version,
            traffic_percent=percent if mode == ExperimentMode.CANARY else 0.0,
            salt=uuid.uuid4().hex,
            started_by=actor[:200],
        )
        if mode == ExperimentMode.SHADOW:
            return f"version {number} in shadow beside stable {stable.number}"
        return f"version {number} canary for {percent:g}% of shoppers beside stable {stable.number}"

    return _change_serving(name, change, actor=actor, action=AuditAction.DEPLOY)


def _end_experiment(experiment: Experiment, status: str, reason: str) -> None:
    Experiment.objects.filter(pk=experiment.pk).update(
        status=status, ended_at=timezone.now(), end_reason=reason[:2000]
    )


def model_promote(*, name: str, actor: str) -> str:
    """The running experiment's candidate becomes stable; the old stable stays loaded (retired)
    as the version a rollback returns to."""

    def change(model: RegisteredModel) -> str:
        experiment = Experiment.objects.filter(model=model, status=ExperimentStatus.RUNNING).first()
        if experiment is None:
            candidate = ModelVersion.objects.filter(model=model).exclude(number=None).first()
            hint = ""
            if candidate is not None and candidate.status == VersionStatus.FAILED:
                hint = f" (version {candidate.number} failed: {candidate.status_reason})"
            raise TransitionRefused(
                "no canary or shadow version to promote: deploy one first" + hint
            )
        candidate = experiment.candidate_version
        stable = ModelVersion.objects.filter(model=model, status=VersionStatus.STABLE).first()
        now = timezone.now()
        if stable is not None:
            ModelVersion.objects.filter(pk=stable.pk).update(
                status=VersionStatus.RETIRED,
                status_reason=f"replaced by version {candidate.number}",
            )
        ModelVersion.objects.filter(pk=candidate.pk).update(
            status=VersionStatus.STABLE, stable_since=now, status_reason=""
        )
        _end_experiment(experiment, ExperimentStatus.PROMOTED, f"promoted by {actor}")
        return f"version {candidate.number} promoted to stable (was {stable and stable.number})"

    return _change_serving(name, change, actor=actor, action=AuditAction.PROMOTE)


def model_rollback(*, name: str, actor: str, reason: str = "") -> str:
    """Stable -> the version that was stable before it. A running experiment is stopped first
    (its candidate returns to ready)."""

    def change(model: RegisteredModel) -> str:
        stable = ModelVersion.objects.filter(model=model, status=VersionStatus.STABLE).first()
        if stable is None:
            raise TransitionRefused(f"model {model.name!r} has no stable version to roll back")
        previous = _previous_stable(model, stable)
        if previous is None:
            raise TransitionRefused(
                f"no previous stable version to roll back to (version {stable.number} is the first)"
            )
        experiment = Experiment.objects.filter(model=model, status=ExperimentStatus.RUNNING).first()
        if experiment is not None:
            ModelVersion.objects.filter(pk=experiment.candidate_version_id).update(
                status=VersionStatus.READY
            )
            _end_experiment(experiment, ExperimentStatus.STOPPED, "stable version rolled back")
        now = timezone.now()
        why = f"rolled back by {actor}" + (f": {reason}" if reason else "")
        ModelVersion.objects.filter(pk=stable.pk).update(
            status=VersionStatus.RETIRED, rolled_back_at=now, status_reason=why
        )
        ModelVersion.objects.filter(pk=previous.pk).update(
            status=VersionStatus.STABLE, stable_since=now, status_reason=""
        )
        return f"stable rolled back from version {stable.number} to {previous.number}" + (
            f": {reason}" if reason else ""
        )

    return _change_serving(name, change, actor=actor, action=AuditAction.ROLLBACK)


def experiment_stop(*, name: str, actor: str, reason: str = "", automatic: bool = False) -> str:
    """End the running experiment: nobody sees the candidate any more. Stopped by hand, the
    candidate returns to ready; stopped by a guardrail, it is retired with the breach as reason."""

    def change(model: RegisteredModel) -> str:
        experiment = Experiment.objects.filter(model=model, status=ExperimentStatus.RUNNING).first()
        if experiment is None:
            raise TransitionRefused(f"model {model.name!r} has no running experiment")
        candidate = experiment.candidate_version
        if automatic:
            ModelVersion.objects.filter(pk=candidate.pk).update(
                status=VersionStatus.RETIRED, status_reason=f"guardrail: {reason}"
            )
            _end_experiment(experiment, ExperimentStatus.ROLLED_BACK, f"guardrail: {reason}")
            return f"canary version {candidate.number} rolled back automatically: {reason}"
        ModelVersion.objects.filter(pk=candidate.pk).update(status=VersionStatus.READY)
        _end_experiment(experiment, ExperimentStatus.STOPPED, reason or f"stopped by {actor}")
        return f"experiment with version {candidate.number} stopped" + (
            f": {reason}" if reason else ""
        )

    action = AuditAction.AUTO_ROLLBACK if automatic else AuditAction.STOP
    return _change_serving(name, change, actor=actor, action=action)


def registry_redeploy(*, actor: str) -> None:
    """Apply the registry's state to the model server again (after a model server restart
    without the config file, for instance)."""
    with transaction.atomic():
        _global_lock()
        state = serving_state()
        if state:
            try:
                deployment.apply(state)
            except deployment.DeploymentFailed as error:
                raise DeploymentFailed(str(error)) from error
    logger.info("registry state re-applied by %s", actor)
    _serving_changed()


def registry_sweep(*, older_than: timedelta = timedelta(hours=1)) -> dict[str, int]:
    """Housekeeping after crashes: a version stuck in `validating` (its worker died) fails with
    that reason, and upload files nobody waits for are removed."""
    stuck = ModelVersion.objects.filter(
        status=VersionStatus.VALIDATING, updated_at__lt=timezone.now() - older_than
    ).select_related("model")
    failed = 0
    for version in stuck:
        _fail(version, "validation was interrupted (worker lost); push again", actor="sweep")
        failed += 1
    cutoff = timezone.now().timestamp() - older_than.total_seconds()
    staging_removed = 0
    repository = Path(settings.MODEL_REPOSITORY)
    for model in RegisteredModel.objects.values_list("name", flat=True):
        folder = repository / model
        for leftover in folder.glob(".push-*") if folder.is_dir() else []:
            if leftover.stat().st_mtime < cutoff:
                remove_tree(leftover)
                staging_removed += 1
    return {
        "failed": failed,
        "uploads_removed": uploads_sweep(older_than=older_than),
        "staging_removed": staging_removed,
    }


def uploads_sweep(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Remove upload files whose version is gone or finished (a crash between steps)."""
    folder = Path(settings.REGISTRY_UPLOAD_DIR)
    if not folder.is_dir():
        return 0
    waiting = set(
        ModelVersion.objects.filter(
            status__in=[VersionStatus.UPLOADED, VersionStatus.VALIDATING]
        ).values_list("upload_path", flat=True)
    )
    cutoff = timezone.now().timestamp() - older_than.total_seconds()
    removed = 0
    for path in folder.iterdir():
        if str(path) not in waiting and path.stat().st_mtime < cutoff:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    return removed


def experiments_guard(*, now: datetime | None = None) -> list[str]:
    """Check every running experiment's guardrails; roll back a canary that has broken one for
    REGISTRY_GUARDRAIL_BREACH_SECONDS. Returns what was done (for the task's result)."""
    from .selectors import guardrail_verdict

    now = now or timezone.now()
    done = []
    running = Experiment.objects.filter(status=ExperimentStatus.RUNNING).select_related(
        "model", "stable_version", "candidate_version"
    )
    for experiment in running:
        verdict = guardrail_verdict(experiment, now=now)
        if not verdict.breached:
            if experiment.guardrail_breach_since is not None:
                Experiment.objects.filter(pk=experiment.pk).update(
                    guardrail_breach_since=None, guardrail_breach=""
                )
            continue
        reason = "; ".join(verdict.reasons)
        since = experiment.guardrail_breach_since or now
        if experiment.guardrail_breach_since is None:
            Experiment.objects.filter(pk=experiment.pk).update(
                guardrail_breach_since=now, guardrail_breach=reason
            )
        held = (now - since).total_seconds()
        if held < settings.REGISTRY_GUARDRAIL_BREACH_SECONDS:
            done.append(f"{experiment.model.name}: breach for {held:.0f} s: {reason}")
            continue
        try:
            done.append(
                experiment_stop(
                    name=experiment.model.name,
                    actor="guardrail",
                    reason=f"{reason} (for {held:.0f} s)",
                    automatic=True,
                )
            )
        except RegistryError as error:
            logger.error("automatic rollback of %s failed: %s", experiment.model.name, error)
            done.append(f"{experiment.model.name}: automatic rollback failed: {error}")
    return done
