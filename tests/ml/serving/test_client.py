"""The serving client against the real local model server, run as a subprocess
(`python -m ml.serving.server`) over SavedModels with the recommendation contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ml.serving.client import (
    CircuitOpen,
    ModelConfig,
    ModelNotFound,
    ModelServerError,
    ModelServerUnavailable,
    PredictionClient,
    Recommendations,
    model_config_text,
    model_server_config,
)

ROOT = Path(__file__).resolve().parents[3]
STARTUP_SECONDS = 60.0
NUM_ITEMS = 40


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def launch_model_server(config_file: Path, log: Path) -> subprocess.Popen:
    """`python -m ml.serving.server` on a free port (0), its log in a file (no pipe to drain)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [
                sys.executable, "-m", "ml.serving.server",
                "--port=0", "--rest_api_port=0", "--host=127.0.0.1",
                f"--model_config_file={config_file}",
                "--file_system_poll_wait_seconds=0.05",
            ],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_until_serving(process: subprocess.Popen, log: Path) -> ServerProcess:
    """The server logs its port once every model is loaded; wait for that line."""
    deadline = time.monotonic() + STARTUP_SECONDS
    pattern = re.compile(r"Running gRPC ModelServer at [\d.]+:(\d+)")
    while True:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return ServerProcess(process, int(found.group(1)), log)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"model server did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Deployment:
    models: Path  # base path of "recommender": versions 1 and 2
    config: list[ModelConfig]
    main: ServerProcess  # shared by the tests
    victim: ServerProcess  # killed by one test


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from ml.serving.contract_model import export_contract_model  # TensorFlow: tests only

    root = tmp_path_factory.mktemp("client")
    base = root / "recommender"
    export_contract_model(str(base / "1"), num_items=NUM_ITEMS, dim=4, seed=1)
    export_contract_model(str(base / "2"), num_items=NUM_ITEMS, dim=4, seed=2)
    config = [
        ModelConfig("recommender", str(base), all_versions=True, labels={"stable": 1, "canary": 2})
    ]
    config_file = root / "models.config"
    config_file.write_text(model_config_text(config))
    # Both servers import TensorFlow at the same time: one start-up wait instead of two.
    launched = [launch_model_server(config_file, root / f"server-{n}.log") for n in (0, 1)]
    try:
        main, victim = (
            wait_until_serving(process, root / f"server-{n}.log")
            for n, process in enumerate(launched)
        )
        yield Deployment(models=base, config=config, main=main, victim=victim)
    finally:
        for process in launched:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[PredictionClient]:
    with PredictionClient(deployment.main.target, timeout=10.0) as client:
        yield client


# --- Predict ---------------------------------------------------------------------------------


def test_recommend_answers_the_latest_version_ranked_without_the_history(client):
    # when
    result = client.recommend(["item-1", "item-2"], [1.0, 0.5], k=5)

    # then
    assert isinstance(result, Recommendations)
    assert result.model_name == "recommender"
    assert result.model_version == 2
    assert len(result.item_ids) == 5 and len(set(result.item_ids)) == 5
    assert not {"item-1", "item-2"} & set(result.item_ids)
    assert list(result.scores) == sorted(result.scores, reverse=True)
    assert all(isinstance(score, float) for score in result.scores)


def test_recommend_by_version_and_label(client):
    assert client.recommend(["item-1"], k=3, version=1).model_version == 1
    assert client.recommend(["item-1"], k=3, label="stable").model_version == 1
    assert client.recommend(["item-1"], k=3, label="canary").model_version == 2
    by_label = client.recommend(["item-1"], k=3, label="stable")
    assert by_label == client.recommend(["item-1"], k=3, version=1)
    assert by_label.item_ids != client.recommend(["item-1"], k=3, version=2).item_ids


def test_weights_and_padding_reach_the_model(client):
    # given: a weight of zero makes an item count as absent; "" is padding
    alone = client.recommend(["item-3"], k=4)

    # then
    weighted_out = client.recommend(["item-3", "item-9"], [1.0, 0.0], k=4)
    assert list(weighted_out.item_ids[:3]) == [i for i in alone.item_ids if i != "item-9"][:3]
    first, second = client.recommend_batch([["item-3"], ["item-5", "item-6", "item-7"]], k=4)
    assert first.item_ids == alone.item_ids
    assert first.scores == pytest.approx(alone.scores, abs=1e-5)  # batched matmul rounds apart
    assert second.item_ids == client.recommend(["item-5", "item-6", "item-7"], k=4).item_ids


def test_more_than_the_catalogue_answers_every_item_once(client):
    result = client.recommend(["item-0"], k=NUM_ITEMS + 10)
    assert len(result.item_ids) == NUM_ITEMS - 1  # padding ("") dropped, the history excluded


def test_similar_answers_one_list_per_item(client):
    lists = client.similar(["item-1", "item-2"], k=3, label="stable")
    assert [len(items) for items in lists] == [3, 3]
    assert "item-1" not in lists[0].item_ids and "item-2" not in lists[1].item_ids
    assert lists[0].model_version == 1


def test_unknown_model_or_version_is_model_not_found(client):
    with pytest.raises(ModelNotFound, match=r"Latest\(nope\)"):
        client.recommend(["item-1"], k=3, model="nope")
    with pytest.raises(ModelNotFound, match=r"Specific\(recommender, 9\)"):
        client.recommend(["item-1"], k=3, version=9)
    assert client.circuit_state == "closed"


def test_programming_errors_stay_loud(deployment, client):
    with pytest.raises(ModelServerError) as unknown_label:
        client.recommend(["item-1"], k=3, label="nightly")
    assert unknown_label.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert not isinstance(unknown_label.value, ModelServerUnavailable)

    wrong = PredictionClient(deployment.main.target, recommend_signature="ranking")
    with wrong, pytest.raises(ModelServerError) as unknown_signature:
        wrong.recommend(["item-1"], k=3)
    assert unknown_signature.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "ranking" not found.' in unknown_signature.value.message


def test_one_channel_shared_by_threads(client):
    # given
    errors: list[BaseException] = []
    results: list[Recommendations] = []

    def work() -> None:
        try:
            for index in range(20):
                results.append(client.recommend([f"item-{index}"], k=2))
        except BaseException as error:
            errors.append(error)

    # when
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then
    assert not errors
    assert len(results) == 160
    assert client.channels_created == 1


# --- model management ------------------------------------------------------------------------


def test_model_status_and_metadata(client):
    statuses = client.model_status()
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (2, "AVAILABLE", "OK"),
        (1, "AVAILABLE", "OK"),
    ]
    assert all(status.available for status in statuses)
    with pytest.raises(ModelNotFound):
        client.model_status("nope")

    metadata = client.model_metadata(label="stable")
    assert metadata.model_version == 1
    recommend = metadata.signatures["recommend"]
    assert {alias: (t.dtype, t.shape) for alias, t in recommend.inputs.items()} == {
        "history": ("DT_STRING", (-1, -1)),
        "history_weights": ("DT_FLOAT", (-1, -1)),
        "k": ("DT_INT32", ()),
    }
    assert {alias: t.dtype for alias, t in metadata.signatures["similar"].outputs.items()} == {
        "item_ids": "DT_STRING",
        "scores": "DT_FLOAT",
    }


def test_reload_config_adds_a_model_with_labels_and_refuses_a_label_on_a_missing_version(
    deployment, client
):
    base = str(deployment.models)
    try:
        # when: a second name over the same versions, only version 1, labelled
        client.reload_config(
            [*deployment.config, ModelConfig("shadow", base, versions=(1,), labels={"stable": 1})]
        )

        # then
        assert client.recommend(["item-1"], k=2, model="shadow", label="stable").model_version == 1
        assert [s.version for s in client.model_status("shadow")] == [1]

        # when: a label on a version that is not loaded
        bad = ModelConfig("shadow", base, versions=(1,), labels={"stable": 2})
        with pytest.raises(ModelServerError) as raised:
            client.reload_config([*deployment.config, bad])
        assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "not currently available for inference" in raised.value.message
    finally:
        client.reload_config(model_server_config(deployment.config))
    wait_for(lambda: _not_found(client, "shadow"), 10, "shadow to be unloaded")


def _not_found(client: PredictionClient, model: str) -> bool:
    try:
        client.recommend(["item-1"], k=1, model=model)
    except ModelNotFound:
        return True
    return False


# --- a dead server ---------------------------------------------------------------------------


def test_killed_server_fails_fast_then_recovers_when_a_server_is_back(deployment):
    from ml.serving.server import ModelServer, ServerOptions  # TensorFlow: tests only

    # given
    victim = deployment.victim
    client = PredictionClient(victim.target, timeout=5.0, failure_threshold=3, reset_timeout=0.3)
    assert client.recommend(["item-1"], k=2).model_version == 2

    # when the server dies
    victim.process.kill()
    victim.process.wait(timeout=30)

    # then: each call fails with the domain exception, well inside its 5 s budget
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(ModelServerUnavailable) as raised:
            client.recommend(["item-1"], k=2)
        assert not isinstance(raised.value, CircuitOpen)
        assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2.0

    # and then the circuit is open: failures cost microseconds, not connection attempts
    assert client.circuit_state == "open"
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(CircuitOpen):
            client.recommend(["item-1"], k=2)
    per_call = (time.perf_counter() - started) / 1000
    print(f"failing fast with the circuit open: {per_call * 1e6:.1f} us per call")
    assert per_call < 1e-3  # no connection attempt; about 15 us on an idle machine

    # when a server is back on the same port (in-process this time: TensorFlow is loaded here)
    replacement = ModelServer(
        ServerOptions(port=victim.port, rest_api_port=None, host="127.0.0.1"),
        config=model_server_config(deployment.config),
    ).start()
    try:
        # then: after the cool-down a probe gets through and the circuit closes
        wait_for(lambda: _serves(client), 15, "the client to use the new server")
        assert client.circuit_state == "closed"
    finally:
        client.close()
        replacement.stop(grace=0)


def _serves(client: PredictionClient) -> bool:
    try:
        return client.recommend(["item-1"], k=2).model_version == 2
    except ModelServerUnavailable:
        return False


# --- a web worker's process -------------------------------------------------------------------

WEB_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from concurrent.futures import ThreadPoolExecutor
    wall, cpu = time.perf_counter(), time.process_time()
    from ml.serving.client import PredictionClient, protos
    import_wall, import_cpu = time.perf_counter() - wall, time.process_time() - cpu

    def rss_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    def tensorflow_modules():
        return sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))

    client = PredictionClient(sys.argv[1], timeout=10.0)
    requests = int(sys.argv[2])
    client.recommend(["item-1"], k=10)
    rss_start = rss_mb()

    def serve(thread, count):  # a gthread worker: threads share the client
        for index in range(count):
            history = [f"item-{(thread + index + j) % 40}" for j in range(5)]
            result = client.recommend(history, k=10, label="stable" if index % 2 else None)
            assert len(result.item_ids) == 10, result

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(serve, range(4), [requests // 4] * 4))
    report = {
        "requests": requests, "requests_seconds": time.perf_counter() - started,
        "import_wall": import_wall, "import_cpu": import_cpu,
        "rss_after_first": rss_start, "rss_after_all": rss_mb(),
        "tensorflow_modules": tensorflow_modules(), "channels_created": client.channels_created,
    }

    # a prefork child: the parent's channel is never reused, the child gets its own
    child = os.fork()
    if child == 0:
        try:
            ok = len(client.recommend(["item-1"], k=3).item_ids) == 3
            os._exit(0 if ok and client.channels_created == 2 else 3)  # 1 inherited + its own
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + 30
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            report["fork_child_exit"] = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(child, 9)
            report["fork_child_exit"] = "hung"
            break
        time.sleep(0.01)
    report["parent_after_fork"] = len(client.recommend(["item-1"], k=3).item_ids)

    # TensorFlow imported after the client (a worker that also trains): no clash, same classes
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    from tensorflow.core.framework import tensor_pb2
    report["same_classes"] = (
        predict_pb2.PredictRequest is protos.predict_pb2.PredictRequest
        and tensor_pb2.TensorProto is protos.tensor_pb2.TensorProto
    )
    request = protos.predict_pb2.PredictRequest()
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    report["after_tensorflow"] = len(client.recommend(["item-1"], k=3).item_ids)
    print(json.dumps(report))
    """
)


def test_web_worker_process_never_loads_tensorflow(deployment):
    # when: a fresh interpreter imports the client and serves 10,000 recommendations
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", WEB_WORKER, deployment.main.target, "10000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))

    # then: no TensorFlow on the request path, a light import, a small and flat footprint
    assert report["tensorflow_modules"] == []
    assert report["import_cpu"] < 0.5
    assert report["rss_after_all"] < 100
    assert report["rss_after_all"] - report["rss_after_first"] < 10
    # a forked child made its own channel; the parent kept working
    assert report["fork_child_exit"] == 0
    assert report["parent_after_fork"] == 3
    assert report["channels_created"] == 1
    # a later `import tensorflow` works and shares the very same message classes
    assert report["same_classes"] is True
    assert report["after_tensorflow"] == 3
