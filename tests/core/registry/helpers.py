from __future__ import annotations

from pathlib import Path

from core.registry.models import ModelVersion
from core.registry.services import model_version_push, model_version_validate


def push_and_validate(
    archive: Path, *, name: str = "recommender", force: bool = False
) -> ModelVersion:
    with open(archive, "rb") as stream:
        version = model_version_push(name=name, archive=stream, pushed_by="test", force=force)
    return model_version_validate(version_id=version.pk)
