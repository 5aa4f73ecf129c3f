"""`ModelConfig` values -> TF Serving's `ModelServerConfig` (for HandleReloadConfigRequest or the
text file given to `--model_config_file`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import text_format

from ml.serving.client.protos import model_server_config_pb2
from ml.serving.client.results import ModelConfig

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def model_server_config(models: Iterable[ModelConfig]) -> Any:
    """A `tensorflow.serving.ModelServerConfig` message (the very class TF Serving's API uses)."""
    config = ModelServerConfig()
    entries = config.model_config_list.config
    names: set[str] = set()
    for model in models:
        if model.name in names:
            raise ValueError(f"model {model.name!r} is listed twice")
        names.add(model.name)
        entry = entries.add(
            name=model.name, base_path=model.base_path, model_platform=model.platform
        )
        policy = entry.model_version_policy
        if model.versions:
            policy.specific.versions.extend(model.versions)
        elif model.latest is not None:
            policy.latest.num_versions = model.latest
        elif model.all_versions:
            policy.all.SetInParent()
        for label, version in sorted(model.labels.items()):
            entry.version_labels[label] = version
    # An empty list still has to say "a list", or the server would read "no config at all".
    config.model_config_list.SetInParent()
    return config


def model_config_text(models: Iterable[ModelConfig]) -> str:
    """The text format TF Serving reads from `--model_config_file`."""
    return text_format.MessageToString(model_server_config(models))
