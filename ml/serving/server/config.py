"""Where the model list comes from: `--model_name/--model_base_path` or a text config file."""

from __future__ import annotations

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server import errors

CONFIG_TYPE = "tensorflow.serving.ModelServerConfig"


def config_from_flags(
    model_name: str, model_base_path: str
) -> model_server_config_pb2.ModelServerConfig:
    """One model, latest version (TF Serving's behaviour without a config file)."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    return config


def parse_config_text(text: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise errors.invalid_argument(f"Error parsing text-format {CONFIG_TYPE}: {error}") from None
    return config


def read_config_file(path: str) -> tuple[str, model_server_config_pb2.ModelServerConfig]:
    """(file text, parsed config); raises ServingError for an unreadable or malformed file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise errors.invalid_argument(f"Unable to read model config file {path}: {error}") from None
    return text, parse_config_text(text)
