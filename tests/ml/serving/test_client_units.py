"""The serving client's parts that need no model server: tensors, the breaker, config, arguments;
and, against a scripted in-process gRPC servicer, the failure modes a real server cannot be made
to produce on demand (one UNAVAILABLE then OK, a slow answer, a malformed answer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.client import (
    CircuitOpen,
    ModelConfig,
    ModelNotFound,
    ModelResponseError,
    ModelServerError,
    ModelServerUnavailable,
    PredictionClient,
    model_config_text,
    model_server_config,
    protos,
)
from ml.serving.client.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from ml.serving.client.tensors import (
    float_matrix,
    int32_scalar,
    read_floats,
    read_strings,
    string_matrix,
)

# --- tensors ---------------------------------------------------------------------------------


def test_request_tensors_are_what_tensorflow_parses():
    # given
    history = string_matrix([["a", "b", "c"], ["d"]], width=3)
    weights = float_matrix([[1.0, 0.5, 0.25], [2.0]], width=3)
    k = int32_scalar(7)

    # then: TensorFlow reads them back as [2, 3] padded matrices and a scalar
    assert tf.make_ndarray(history).tolist() == [[b"a", b"b", b"c"], [b"d", b"", b""]]
    assert tf.make_ndarray(weights).tolist() == [[1.0, 0.5, 0.25], [2.0, 0.0, 0.0]]
    parsed_k = tf.make_ndarray(k)
    assert parsed_k.shape == () and parsed_k.dtype == np.int32 and int(parsed_k) == 7


def test_reads_tensor_content_as_tensorflow_writes_it():
    # given: make_tensor_proto packs numbers into tensor_content
    scores = tf.make_tensor_proto(np.array([[0.5, 0.25], [1.5, -2.0]], dtype=np.float32))
    assert scores.tensor_content and not scores.float_val

    # then
    assert read_floats(scores) == ((2, 2), [0.5, 0.25, 1.5, -2.0])


def test_reads_string_tensor_content_in_tensorflows_encoding():
    # given: TensorFlow's string tensor_content (varint lengths, then the bytes), built by hand
    # because TensorFlow's Python API always writes string_val
    values = [b"item-1", b"", "caf\u00e9".encode()]
    tensor = protos.tensor_pb2.TensorProto(dtype=protos.types_pb2.DT_STRING)
    tensor.tensor_shape.dim.add(size=3)
    tensor.tensor_content = bytes([6, 0, 5]) + b"".join(values)

    # then
    assert read_strings(tensor) == ((3,), ["item-1", "", "caf\u00e9"])


def test_typed_fields_shorter_than_the_shape_repeat_the_last_value_like_tensorflow():
    # given
    tensor = tf.make_tensor_proto(np.float32(0.5), shape=[2, 2])  # one float_val, shape [2, 2]
    assert len(tensor.float_val) == 1

    # then
    assert read_floats(tensor) == ((2, 2), [0.5, 0.5, 0.5, 0.5])
    assert tf.make_ndarray(tensor).ravel().tolist() == [0.5, 0.5, 0.5, 0.5]


def test_wrong_dtype_or_size_is_a_response_error():
    with pytest.raises(ModelResponseError):
        read_floats(tf.make_tensor_proto(np.array([1, 2], dtype=np.int64)))
    broken = tf.make_tensor_proto(np.array([1.0, 2.0], dtype=np.float32))
    broken.tensor_shape.dim[0].size = 3
    with pytest.raises(ModelResponseError):
        read_floats(broken)


# --- circuit breaker -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_lets_one_probe_through_after_cool_down():
    # given
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=2.0, clock=clock)

    # when: two failures, a success, three failures
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    breaker.before_call()
    breaker.record_success()
    for _ in range(3):
        breaker.before_call()
        breaker.record_failure()

    # then: open, failing fast until the cool-down passes
    assert breaker.state == OPEN
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 2.0
    breaker.before_call()  # the probe
    assert breaker.state == HALF_OPEN
    with pytest.raises(CircuitOpen, match="probe"):
        breaker.before_call()  # others keep failing fast while it runs

    # when the probe fails: open again for a full cool-down
    breaker.record_failure()
    assert breaker.state == OPEN
    clock.now += 1.0
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 1.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == CLOSED
    breaker.before_call()


def test_breaker_released_probe_lets_the_next_call_probe():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    breaker.before_call()
    breaker.release()  # the probe died of a client-side error
    breaker.before_call()  # so this one may probe
    assert breaker.state == HALF_OPEN


# --- config and arguments --------------------------------------------------------------------


def test_model_server_config_from_plain_values():
    # when
    config = model_server_config(
        [
            ModelConfig(
                "recommender",
                "/models/recommender",
                versions=(41, 42),
                labels={"stable": 41, "canary": 42},
            ),
            ModelConfig("similar", "/models/similar", latest=2),
            ModelConfig("everything", "/models/everything", all_versions=True),
            ModelConfig("plain", "/models/plain"),
        ]
    )

    # then: the same message TF Serving's own classes build from the text format
    expected = text_format.Parse(
        """
        model_config_list {
          config { name: "recommender" base_path: "/models/recommender"
                   model_platform: "tensorflow"
                   model_version_policy { specific { versions: 41 versions: 42 } }
                   version_labels { key: "canary" value: 42 }
                   version_labels { key: "stable" value: 41 } }
          config { name: "similar" base_path: "/models/similar" model_platform: "tensorflow"
                   model_version_policy { latest { num_versions: 2 } } }
          config { name: "everything" base_path: "/models/everything"
                   model_platform: "tensorflow" model_version_policy { all {} } }
          config { name: "plain" base_path: "/models/plain" model_platform: "tensorflow" }
        }
        """,
        model_server_config_pb2.ModelServerConfig(),
    )
    assert config == expected
    assert type(config) is model_server_config_pb2.ModelServerConfig
    reparsed = text_format.Parse(
        model_config_text([ModelConfig("plain", "/models/plain")]),
        model_server_config_pb2.ModelServerConfig(),
    )
    assert reparsed.model_config_list.config[0].name == "plain"


def test_model_config_rejects_two_policies_and_duplicates():
    with pytest.raises(ValueError, match="one version policy"):
        ModelConfig("m", "/m", versions=(1,), latest=1)
    with pytest.raises(ValueError, match="twice"):
        model_server_config([ModelConfig("m", "/m"), ModelConfig("m", "/n")])


def test_bad_arguments_fail_before_any_network_call():
    client = PredictionClient("127.0.0.1:1")
    with pytest.raises(ValueError, match="version or by label"):
        client.recommend(["a"], k=3, version=1, label="stable")
    with pytest.raises(ValueError, match="same shape"):
        client.recommend(["a", "b"], [1.0], k=3)
    with pytest.raises(ValueError, match="positive"):
        client.recommend(["a"], k=0)
    with pytest.raises(TypeError):
        client.recommend("item-1", k=3)
    with pytest.raises(ValueError, match="keepalive"):
        PredictionClient("127.0.0.1:1", keepalive_time=10)
    assert client.channels_created == 0


def test_spent_budget_raises_unavailable_without_calling():
    client = PredictionClient("127.0.0.1:1")
    with pytest.raises(ModelServerUnavailable, match="budget"):
        client.recommend(["a"], k=3, timeout=0)
    assert client.channels_created == 0


# --- scripted servicer -----------------------------------------------------------------------

Behaviour = Callable[
    [predict_pb2.PredictRequest, grpc.ServicerContext], predict_pb2.PredictResponse
]


class ScriptedPredictions(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers Predict with the next behaviour of a script (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Behaviour] = []
        self.calls = 0
        self._lock = threading.Lock()

    def Predict(self, request, context):
        with self._lock:
            self.calls += 1
            behaviour = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return behaviour(request, context)


def fail(code: grpc.StatusCode) -> Behaviour:
    def behaviour(request, context):
        context.abort(code, f"scripted {code.name}")

    return behaviour


def answer(
    item_ids: list[list[str]], scores: list[list[float]], *, content: bool = False
) -> Behaviour:
    def behaviour(request, context):
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 3
        response.model_spec.signature_name = request.model_spec.signature_name
        ids = tf.make_tensor_proto(np.array(item_ids, dtype=object))
        values = tf.make_tensor_proto(np.array(scores, dtype=np.float32))
        if not content:
            values = tf.make_tensor_proto(
                np.array(scores, dtype=np.float32).ravel().tolist(),
                dtype=tf.float32,
                shape=np.shape(scores),
            )
        response.outputs["item_ids"].CopyFrom(ids)
        response.outputs["scores"].CopyFrom(values)
        return response

    return behaviour


def slow(seconds: float, then: Behaviour) -> Behaviour:
    def behaviour(request, context):
        time.sleep(seconds)  # the failure mode under test is a slow server
        return then(request, context)

    return behaviour


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedPredictions, str]]:
    servicer = ScriptedPredictions()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=0)


def test_fake_server_one_unavailable_is_retried_inside_the_budget(scripted):
    # given
    servicer, target = scripted
    servicer.script = [fail(grpc.StatusCode.UNAVAILABLE), answer([["b", "c"]], [[0.9, 0.1]])]
    client = PredictionClient(target, timeout=5)

    # when
    result = client.recommend(["a"], k=2)

    # then
    assert servicer.calls == 2
    assert result.item_ids == ("b", "c")
    assert client.circuit_state == CLOSED


def test_fake_server_unavailable_twice_raises_after_exactly_one_retry(scripted):
    servicer, target = scripted
    servicer.script = [fail(grpc.StatusCode.UNAVAILABLE)]
    client = PredictionClient(target, timeout=5)

    with pytest.raises(ModelServerUnavailable) as raised:
        client.recommend(["a"], k=2)

    assert servicer.calls == 2
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert not isinstance(raised.value, CircuitOpen)


def test_fake_server_too_slow_is_deadline_exceeded_and_not_retried(scripted):
    servicer, target = scripted
    servicer.script = [slow(0.3, answer([["b"]], [[1.0]]))]
    client = PredictionClient(target, timeout=5)
    client.recommend(["a"], k=1)  # connect first: the deadline below is for the call alone
    servicer.calls = 0

    started = time.monotonic()
    with pytest.raises(ModelServerUnavailable) as raised:
        client.recommend(["a"], k=1, timeout=0.05)

    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.25
    assert servicer.calls == 1


def test_fake_server_circuit_opens_fails_fast_and_closes_after_a_probe(scripted):
    # given
    servicer, target = scripted
    servicer.script = [fail(grpc.StatusCode.UNAVAILABLE)]
    client = PredictionClient(target, timeout=5, failure_threshold=2, reset_timeout=0.2)

    # when: two calls fail (each after its retry)
    for _ in range(2):
        with pytest.raises(ModelServerUnavailable):
            client.recommend(["a"], k=1)

    # then: the circuit is open and nothing reaches the server
    assert client.circuit_state == OPEN
    calls = servicer.calls
    with pytest.raises(CircuitOpen):
        client.recommend(["a"], k=1)
    assert servicer.calls == calls

    # when the server recovers and the cool-down passes, one probe closes the circuit
    servicer.script = [answer([["b"]], [[1.0]])]
    deadline = time.monotonic() + 5
    while client.circuit_state != CLOSED and time.monotonic() < deadline:
        try:
            client.recommend(["a"], k=1)
        except CircuitOpen:
            time.sleep(0.01)
    assert client.circuit_state == CLOSED


def test_fake_server_not_found_and_invalid_argument_do_not_open_the_circuit(scripted):
    servicer, target = scripted
    client = PredictionClient(target, timeout=5, failure_threshold=1)
    servicer.script = [fail(grpc.StatusCode.NOT_FOUND)]
    with pytest.raises(ModelNotFound):
        client.recommend(["a"], k=1)
    servicer.script = [fail(grpc.StatusCode.INVALID_ARGUMENT)]
    with pytest.raises(ModelServerError) as raised:
        client.recommend(["a"], k=1)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert not isinstance(raised.value, ModelServerUnavailable)
    assert client.circuit_state == CLOSED


def test_fake_server_tensor_content_and_padding_are_read(scripted):
    # given: scores in tensor_content, a padded row
    servicer, target = scripted
    servicer.script = [answer([["x", "y"], ["z", ""]], [[0.5, 0.25], [0.75, 0.0]], content=True)]
    client = PredictionClient(target, timeout=5)

    # when
    first, second = client.recommend_batch([["a"], ["b", "c"]], k=2, label="canary")

    # then
    assert first.item_ids == ("x", "y") and first.scores == (0.5, 0.25)
    assert second.item_ids == ("z",) and second.scores == (0.75,)
    assert first.model_version == 3


def test_fake_server_answer_without_the_contract_is_loud(scripted):
    servicer, target = scripted
    servicer.script = [answer([["x"], ["y"]], [[1.0], [2.0]])]  # two rows for one history
    client = PredictionClient(target, timeout=5)
    with pytest.raises(ModelResponseError):
        client.recommend(["a"], k=1)


def test_fake_server_observer_sees_every_outcome(scripted):
    # given
    servicer, target = scripted
    seen: list[tuple[str, str]] = []
    client = PredictionClient(
        target,
        timeout=5,
        failure_threshold=1,
        reset_timeout=60,
        observer=lambda method, outcome, seconds: seen.append((method, outcome)),
    )

    # when
    servicer.script = [answer([["b"]], [[1.0]])]
    client.recommend(["a"], k=1)
    servicer.script = [fail(grpc.StatusCode.NOT_FOUND)]
    with pytest.raises(ModelNotFound):
        client.recommend(["a"], k=1)
    servicer.script = [fail(grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(ModelServerUnavailable):
        client.recommend(["a"], k=1)
    with pytest.raises(CircuitOpen):
        client.recommend(["a"], k=1)

    # then
    assert seen == [
        ("predict", "OK"),
        ("predict", "NOT_FOUND"),
        ("predict", "UNAVAILABLE"),
        ("predict", "CIRCUIT_OPEN"),
    ]


def test_client_and_tensorflow_share_the_message_classes():
    # given: this process has both TensorFlow's modules and the client's (in whichever order the
    # suite happened to import them; both orders run in subprocesses elsewhere)
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    # then: no second copy of any message class
    assert protos.predict_pb2.PredictRequest is predict_pb2.PredictRequest
    assert protos.tensor_pb2.TensorProto is tensor_pb2.TensorProto
    assert protos.get_model_metadata_pb2.SignatureDefMap is get_model_metadata_pb2.SignatureDefMap
