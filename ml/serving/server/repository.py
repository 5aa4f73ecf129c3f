"""The model repository on disk: which folders are versions, and which versions a policy wants."""

from __future__ import annotations

import os

from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server import errors

SUPPORTED_PLATFORMS = ("", "tensorflow")


def scan_versions(base_path: str) -> dict[int, str]:
    """Children of `base_path` whose name is a number: {123: '<base>/00000123'}."""
    versions: dict[int, str] = {}
    with os.scandir(base_path) as entries:
        for entry in entries:
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
                versions.setdefault(int(entry.name), entry.path)
    return versions


def aspired_versions(
    config: model_server_config_pb2.ModelConfig, on_disk: dict[int, str]
) -> set[int]:
    policy = config.model_version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(on_disk)
    if kind == "specific":
        return {version for version in policy.specific.versions if version in on_disk}
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return set(sorted(on_disk, reverse=True)[:count])


def validate_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    kind = config.WhichOneof("config")
    if kind not in (None, "model_config_list"):
        raise errors.invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise errors.invalid_argument("Model name must not be empty")
        if model.name in seen:
            raise errors.invalid_argument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        seen.add(model.name)
        if not model.base_path:
            raise errors.invalid_argument(f"Model {model.name} has no base_path")
        if model.model_platform not in SUPPORTED_PLATFORMS:
            raise errors.invalid_argument(
                f"Model {model.name} has unsupported model_platform {model.model_platform}"
            )
