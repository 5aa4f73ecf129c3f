"""`python -m ml.serving.server` as a user runs it: TF Serving's flags, start-up, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.ml.serving.conftest import ModelLibrary, install_version, predict_request, wait_for

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(*flags: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, "-m", "ml.serving.server", "--host=127.0.0.1", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_the_server_starts_with_tf_serving_flags_serves_and_stops_on_sigterm(
    models: ModelLibrary, tmp_path
):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    port = _free_port()
    process = _run(
        f"--port={port}",
        "--rest_api_port=0",
        "--model_name=hpt",
        f"--model_base_path={base}",
        "--file_system_poll_wait_seconds=0",
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            # TF Serving's own harness: up once a Predict on a missing model says "Servable"
            def answers_servable() -> bool:
                try:
                    stub.Predict(predict_request("missing", [1.0]), timeout=1)
                except grpc.RpcError as error:
                    return "Servable" in (error.details() or "")
                return False

            wait_for(answers_servable, timeout=60, what="the server to listen")
            response = stub.Predict(predict_request("hpt", [4.0]), timeout=5)
            assert list(response.outputs["y"].float_val) == [4.0]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "Running gRPC ModelServer at 127.0.0.1:" in output


@pytest.mark.slow
def test_a_malformed_config_file_stops_start_up_with_tf_servings_message(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: ")

    process = _run(f"--port={_free_port()}", f"--model_config_file={config}")
    output, _ = process.communicate(timeout=60)

    assert process.returncode == 1
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in output


def test_the_cli_sets_grpcs_classic_poller_before_grpc_is_imported():
    # given: grpc reads GRPC_EXPERIMENTS once, when it is first imported
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    env["PYTHONPATH"] = str(ROOT)
    probe = (
        "import os, sys\n"
        "import ml.serving.server\n"
        "assert 'grpc' not in sys.modules, 'the package must not import grpc eagerly'\n"
        "import ml.serving.server.__main__\n"
        "print(os.environ['GRPC_EXPERIMENTS'])\n"
    )

    # when
    default = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    given = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "GRPC_EXPERIMENTS": "-event_engine_client"},
        capture_output=True,
        text=True,
    )

    # then: the CLI's default, unless the environment gives one
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == "-event_engine_listener"
    assert given.stdout.strip() == "-event_engine_client"
