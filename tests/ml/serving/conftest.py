"""A real model server on free loopback ports, over SavedModels these fixtures export themselves.

Exporting costs about a second per model, so the models are built once per session and copied
into each test's repository (copy elsewhere, then rename: versions appear complete).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server import ModelServer, ServerOptions
from ml.serving.server.example_models import (
    export_half_plus_two,
    export_retrieval_model,
)

DEADLINE = 10.0


@dataclass(frozen=True)
class ModelLibrary:
    half_plus_two: Path  # y = 0.5x + 2
    half_plus_three: Path  # y = 0.5x + 3: "version 2" of the same model
    retrieval: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelLibrary:
    root = tmp_path_factory.mktemp("exported")
    return ModelLibrary(
        half_plus_two=Path(export_half_plus_two(str(root / "hpt2"), a=0.5, b=2.0)),
        half_plus_three=Path(export_half_plus_two(str(root / "hpt3"), a=0.5, b=3.0)),
        retrieval=Path(export_retrieval_model(str(root / "retrieval"), num_items=200, k=5)),
    )


def install_version(source: Path, base_path: Path, version: int | str) -> Path:
    """Copy a SavedModel into `base_path/<version>` atomically (copy aside, then rename)."""
    base_path.mkdir(parents=True, exist_ok=True)
    staging = base_path / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    target = base_path / str(version)
    os.rename(staging, target)
    return target


def model_config(*models: tuple[str, Path], extra: str = "") -> str:
    """Text ModelServerConfig for (name, base_path) pairs; `extra` goes inside the first one."""
    entries = []
    for index, (name, base_path) in enumerate(models):
        body = f'name: "{name}" base_path: "{base_path}" model_platform: "tensorflow"'
        if index == 0 and extra:
            body += " " + extra
        entries.append(f"config {{ {body} }}")
    return "model_config_list { " + " ".join(entries) + " }"


def parse_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@dataclass
class RunningServer:
    server: ModelServer
    channel: grpc.Channel
    predictions: prediction_service_pb2_grpc.PredictionServiceStub
    models: model_service_pb2_grpc.ModelServiceStub

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.server.rest_port}"

    def statuses(self, name: str) -> dict[int, int]:
        """{version: state} from GetModelStatus, or {} while the model is unknown."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = self.models.GetModelStatus(request, timeout=DEADLINE)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise
        return {status.version: status.state for status in response.model_version_status}


StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    started: list[RunningServer] = []

    def start(config: str | None = None, **options: object) -> RunningServer:
        defaults: dict[str, object] = {
            "port": 0,
            "rest_api_port": 0,
            "host": "127.0.0.1",
            "file_system_poll_wait_seconds": 0.05,
            "load_retry_interval_micros": 50_000,
            "grpc_max_threads": 8,
        }
        defaults.update(options)
        server = ModelServer(
            ServerOptions(**defaults),  # type: ignore[arg-type]
            config=parse_config(config) if config is not None else None,
        ).start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        running = RunningServer(
            server=server,
            channel=channel,
            predictions=prediction_service_pb2_grpc.PredictionServiceStub(channel),
            models=model_service_pb2_grpc.ModelServiceStub(channel),
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.channel.close()
        running.server.stop(grace=0)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """Poll `condition` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def predict_request(
    name: str,
    x: list[float] | None = None,
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if signature:
        request.model_spec.signature_name = signature
    if x is not None:
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(x, dtype=np.float32)))
    return request


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value
