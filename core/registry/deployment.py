"""What the model server serves, and how a change is applied without a failed request.

The registry's state becomes TF Serving's model config: per model, the specific versions to keep
loaded (stable, the candidate of a running experiment, and the previous stable for a fast
rollback) and the labels `stable` and `canary` (`canary` points at the stable version when no
experiment runs, so the label always resolves).

TF Serving lets a label point only at an AVAILABLE version, and HandleReloadConfigRequest does
not wait for new versions of a model it already serves. So a change is applied in two reloads:

1. the union of what is loaded now and what is wanted, with each label moved only if its new
   version is already AVAILABLE (else it keeps its old version);
2. after every wanted version is AVAILABLE (polled with GetModelStatus, within a deadline): exactly
   the wanted versions and labels. Versions left out are unloaded only now, when no label
   points at them any more.

At every moment both labels resolve to a loaded version, so requests by label never fail. The
same text is written to REGISTRY_MODEL_CONFIG_FILE, for a server that restarts.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from ml.serving.client import (
    ModelConfig,
    ModelNotFound,
    ModelServerError,
    PredictionClient,
    model_config_text,
)

logger = logging.getLogger(__name__)

STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
_POLL_SECONDS = 0.05


class DeploymentFailed(RuntimeError):
    """The model server did not take the new config; what it served before is left in place."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: Mapping[str, int] = field(default_factory=dict)

    def config(self) -> ModelConfig:
        return ModelConfig(
            name=self.name,
            base_path=self.base_path,
            versions=tuple(sorted(self.versions)),
            labels=dict(self.labels),
        )


def served_model(
    *, name: str, stable: int, candidate: int | None, previous: int | None
) -> ServedModel:
    versions = {stable} | {v for v in (candidate, previous) if v is not None}
    return ServedModel(
        name=name,
        base_path=str(
            Path(settings.REGISTRY_SERVER_REPOSITORY or Path(settings.MODEL_REPOSITORY).resolve())
            / name
        ),
        versions=tuple(sorted(versions)),
        labels={STABLE_LABEL: stable, CANARY_LABEL: candidate if candidate else stable},
    )


def admin_client() -> PredictionClient:
    return PredictionClient(
        settings.MODEL_SERVER_TARGET,
        model_name=settings.MODEL_NAME,
        admin_timeout=settings.REGISTRY_DEPLOY_TIMEOUT_SECONDS,
    )


def _available(client: PredictionClient, name: str) -> tuple[set[int], dict[int, str]]:
    """(AVAILABLE versions, {version: load error} for failed ones) as the server reports them."""
    try:
        statuses = client.model_status(name, timeout=10.0)
    except ModelNotFound:
        return set(), {}
    available = {status.version for status in statuses if status.available}
    failed = {
        status.version: status.error_message or status.error_code
        for status in statuses
        if status.state == "END" and status.error_code != "OK"
    }
    return available, failed


def _transition(
    wanted: ServedModel, available: set[int], before: ServedModel | None
) -> ServedModel:
    labels: dict[str, int] = {}
    for label, version in wanted.labels.items():
        if version in available:
            labels[label] = version
        elif before is not None and before.labels.get(label) in available:
            labels[label] = before.labels[label]
    return ServedModel(
        name=wanted.name,
        base_path=wanted.base_path,
        versions=tuple(sorted(set(wanted.versions) | available)),
        labels=labels,
    )


def _wait_available(client: PredictionClient, wanted: Sequence[ServedModel], deadline: float):
    pending = {(model.name, version) for model in wanted for version in model.versions}
    while pending:
        for name in sorted({name for name, _ in pending}):
            available, failed = _available(client, name)
            for version in list(v for n, v in pending if n == name):
                if version in available:
                    pending.discard((name, version))
                elif version in failed:
                    raise DeploymentFailed(
                        f"version {version} of model {name} failed to load: {failed[version]}"
                    )
        if not pending:
            return
        if time.monotonic() > deadline:
            missing = ", ".join(f"{n} v{v}" for n, v in sorted(pending))
            raise DeploymentFailed(f"not AVAILABLE within the deadline: {missing}")
        time.sleep(_POLL_SECONDS)


def write_config_file(models: Sequence[ServedModel], path: str | None = None) -> Path:
    """The text config, written aside and renamed over the old one (a polling server never reads
    half a file)."""
    target = Path(path or settings.REGISTRY_MODEL_CONFIG_FILE)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = model_config_text([model.config() for model in models])
    handle, staging = tempfile.mkstemp(prefix=".models-", suffix=".config", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def apply(
    wanted: Sequence[ServedModel],
    *,
    before: Sequence[ServedModel] = (),
    client: PredictionClient | None = None,
) -> None:
    """Make the model server serve `wanted` (every model the registry deploys). Raises
    DeploymentFailed; the caller re-applies `before` to undo a half-done change."""
    own_client = client is None
    client = client or admin_client()
    deadline = time.monotonic() + settings.REGISTRY_DEPLOY_TIMEOUT_SECONDS
    previous = {model.name: model for model in before}
    try:
        first = []
        for model in wanted:
            available, _ = _available(client, model.name)
            first.append(_transition(model, available, previous.get(model.name)))
        if first != list(wanted):
            client.reload_config([model.config() for model in first])
        _wait_available(client, wanted, deadline)
        client.reload_config([model.config() for model in wanted])
    except ModelServerError as error:
        raise DeploymentFailed(f"the model server refused the config: {error}") from error
    finally:
        if own_client:
            client.close()
    write_config_file(wanted)
    logger.info(
        "model server now serves %s",
        "; ".join(f"{m.name} {list(m.versions)} {dict(m.labels)}" for m in wanted),
    )
