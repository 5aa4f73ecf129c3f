"""Version folders, version policies and config validation, without a server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server.errors import ServingError
from ml.serving.server.repository import aspired_versions, scan_versions, validate_config


def _model(text: str) -> model_server_config_pb2.ModelConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelConfig())


def test_only_numeric_folders_are_versions(tmp_path):
    for name in ("1", "0002", "10", "-3", "v4", ".staging-5", "1e3"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a folder")

    assert sorted(scan_versions(str(tmp_path))) == [1, 2, 10]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", {10}),
        ("model_version_policy { latest { num_versions: 2 } }", {2, 10}),
        ("model_version_policy { all {} }", {1, 2, 10}),
        ("model_version_policy { specific { versions: 1 versions: 99 } }", {1}),
    ],
)
def test_policies(policy: str, expected: set[int]):
    on_disk = {1: "/m/1", 2: "/m/2", 10: "/m/10"}

    assert aspired_versions(_model(f'name: "m" base_path: "/m" {policy}'), on_disk) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('config { name: "a" base_path: "/a" } config { name: "a" base_path: "/b" }',
         "Illegal to list model a multiple times in config list"),
        ('config { name: "a" }', "Model a has no base_path"),
        ('config { name: "a" base_path: "/a" model_platform: "pytorch" }',
         "Model a has unsupported model_platform pytorch"),
    ],
)  # fmt: skip
def test_invalid_configs_are_refused(text: str, message: str):
    config = text_format.Parse(
        f"model_config_list {{ {text} }}", model_server_config_pb2.ModelServerConfig()
    )

    with pytest.raises(ServingError) as raised:
        validate_config(config)

    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message
