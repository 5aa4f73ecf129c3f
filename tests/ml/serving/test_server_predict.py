"""Predict against a real server: answers, and every error row of SERVING.md in order."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.ml.serving.conftest import (
    DEADLINE,
    ModelLibrary,
    RunningServer,
    StartServer,
    install_version,
    model_config,
    predict_request,
    rpc_error,
)


@pytest.fixture
def server(models: ModelLibrary, start_server: StartServer, tmp_path) -> RunningServer:
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    install_version(models.half_plus_three, base, 2)
    retrieval = tmp_path / "retrieval"
    install_version(models.retrieval, retrieval, 7)
    config = model_config(
        ("hpt", base),
        ("retrieval", retrieval),
        extra='model_version_policy { all {} } version_labels { key: "stable" value: 1 }',
    )
    return start_server(config)


def test_predict_answers_typed_fields_and_the_resolved_model_spec(server: RunningServer):
    # when
    response = server.predictions.Predict(predict_request("hpt", [1.0, 2.0]), timeout=DEADLINE)

    # then: latest version (2: 0.5x + 3), typed float_val, shape set, default signature named
    y = response.outputs["y"]
    assert y.dtype == types_pb2.DT_FLOAT
    assert [dim.size for dim in y.tensor_shape.dim] == [2]
    assert list(y.float_val) == [3.5, 4.0]
    assert not y.tensor_content
    assert response.model_spec.name == "hpt"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"


def test_predict_by_version_and_by_label_answers_the_numeric_version(server: RunningServer):
    by_version = server.predictions.Predict(predict_request("hpt", [2.0], version=1), timeout=5)
    by_label = server.predictions.Predict(predict_request("hpt", [2.0], label="stable"), timeout=5)

    assert list(by_version.outputs["y"].float_val) == [3.0]
    assert by_label.model_spec.version.value == 1
    assert not by_label.model_spec.version_label
    assert list(by_label.outputs["y"].float_val) == [3.0]


def test_predict_reads_tensor_content_inputs(server: RunningServer):
    request = predict_request("hpt", version=1)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 3
    request.inputs["x"].tensor_content = np.array([0, 2, 4], np.float32).tobytes()

    response = server.predictions.Predict(request, timeout=DEADLINE)

    assert list(response.outputs["y"].float_val) == [2.0, 3.0, 4.0]


def test_output_filter_returns_only_the_named_outputs(server: RunningServer):
    request = predict_request("hpt", [2.0], version=1, signature="two_inputs")
    request.inputs["z"].CopyFrom(tf.make_tensor_proto(np.array([10.0], np.float32)))

    everything = server.predictions.Predict(request, timeout=DEADLINE)
    request.output_filter.append("sum")
    filtered = server.predictions.Predict(request, timeout=DEADLINE)

    assert set(everything.outputs) == {"y", "sum"}
    assert set(filtered.outputs) == {"sum"}
    assert list(filtered.outputs["sum"].float_val) == [13.0]
    assert filtered.model_spec.signature_name == "two_inputs"


def test_retrieval_model_answers_item_ids_and_scores(server: RunningServer):
    request = predict_request("retrieval")
    request.inputs["user_history"].CopyFrom(
        tf.make_tensor_proto(np.array([[b"item-3", b"item-4"], [b"item-9", b""]], dtype=object))
    )

    response = server.predictions.Predict(request, timeout=DEADLINE)

    ids = response.outputs["item_ids"]
    scores = response.outputs["scores"]
    assert ids.dtype == types_pb2.DT_STRING
    assert [d.size for d in ids.tensor_shape.dim] == [2, 5]
    assert len(ids.string_val) == 10
    assert all(item.startswith(b"item-") for item in ids.string_val)
    assert list(scores.float_val[:5]) == sorted(scores.float_val[:5], reverse=True)
    assert response.model_spec.version.value == 7


def _error(server: RunningServer, request: predict_pb2.PredictRequest) -> grpc.RpcError:
    return rpc_error(lambda: server.predictions.Predict(request, timeout=DEADLINE))


def _two_inputs_request(**fields) -> predict_pb2.PredictRequest:
    request = predict_request("hpt", signature="two_inputs", version=1)
    for alias, value in fields.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


@pytest.mark.parametrize(
    ("build", "code", "message"),
    [
        (
            lambda: predict_pb2.PredictRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        ),
        (
            lambda: predict_request("", [1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ModelSpec has no name specified.",
        ),
        (
            lambda: predict_request("hpt", [1.0], label="canary"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: canary",
        ),
        (
            lambda: predict_request("nope", [1.0]),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda: predict_request("hpt", [1.0], version=5),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(hpt, 5)",
        ),
        (
            lambda: predict_request("hpt", [1.0], signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            lambda: _two_inputs_request(x=np.array([1.0], np.float32)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 1!=2 len({x}) != len({x,z}). "
            "Sent extra: {}. Missing but required: {z}.",
        ),
        (
            lambda: _two_inputs_request(
                x=np.array([1.0], np.float32), w=np.array([1.0], np.float32)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Signature input alias: z(feed name: two_inputs_z:0) not found in request and no "
            "default value provided. Inputs expected to be in the request {w,x}, or default input "
            "alias set: ",
        ),
        (
            lambda: _string_x(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but string is provided",
        ),
    ],
    ids=[
        "no-model-spec",
        "empty-name",
        "unknown-label",
        "unknown-model",
        "unknown-version",
        "unknown-signature",
        "wrong-input-count",
        "wrong-input-names",
        "wrong-dtype",
    ],
)
def test_every_error_row_answers_tf_servings_code_and_message(server, build, code, message):
    error = _error(server, build())

    assert error.code() == code
    assert error.details() == message


def _string_x() -> predict_pb2.PredictRequest:
    request = predict_request("hpt")
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([b"1"], dtype=object)))
    return request


def test_unknown_and_duplicate_output_filter_aliases_are_rejected(server: RunningServer):
    unknown = predict_request("hpt", [1.0])
    unknown.output_filter.append("nope")
    duplicate = predict_request("hpt", [1.0])
    duplicate.output_filter.extend(["y", "y"])

    unknown_error = _error(server, unknown)
    duplicate_error = _error(server, duplicate)

    assert unknown_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown_error.details() == (
        "output tensor alias not found in signature: nope Outputs expected to be in the set {y}."
    )
    assert duplicate_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert duplicate_error.details() == "duplicate output tensor alias: y"


def test_checks_run_in_tf_servings_order_first_failure_wins(server: RunningServer):
    # an unknown signature with a wrong dtype: the signature is checked first
    request = _string_x()
    request.model_spec.signature_name = "nope"
    assert _error(server, request).code() == grpc.StatusCode.FAILED_PRECONDITION

    # a bad output filter with a wrong dtype: the filter is checked before the dtype
    request = _string_x()
    request.output_filter.append("nope")
    assert "output tensor alias not found" in _error(server, request).details()

    # an unknown label on an unknown model: the label is checked before the lookup
    error = _error(server, predict_request("nope", [1.0], label="stable"))
    assert error.details() == "Unrecognized servable version label: stable"


def test_shapes_are_not_pre_checked_but_the_op_may_fail(server: RunningServer):
    # a [2, 1] input to a [None] signature: the graph broadcasts it, as TF Serving would
    request = predict_request("hpt", version=1)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [3.0]], np.float32)))
    response = server.predictions.Predict(request, timeout=DEADLINE)
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [2, 1]

    # mismatched shapes for an elementwise op fail in the op, with INVALID_ARGUMENT
    request = _two_inputs_request(
        x=np.array([1.0, 2.0], np.float32), z=np.array([1.0, 2.0, 3.0], np.float32)
    )
    assert _error(server, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_malformed_tensor_is_a_parsing_error(server: RunningServer):
    request = predict_request("hpt", version=1)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 3
    request.inputs["x"].tensor_content = b"\x00" * 5

    error = _error(server, request)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "tensor parsing error: x"


def test_long_messages_are_truncated_like_tf_serving(server: RunningServer):
    error = _error(server, predict_request("m" * 2000, [1.0]))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details().endswith("...TRUNCATED")
    assert len(error.details()) == 1024 + len("...TRUNCATED")


def test_a_huge_request_is_answered_and_the_server_keeps_serving(server: RunningServer):
    # given: 64 MiB of floats, past gRPC's default 4 MiB limit (TF Serving takes up to 2 GB)
    request = predict_request("hpt", version=1)
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 16 * 1024 * 1024
    request.inputs["x"].tensor_content = np.zeros(16 * 1024 * 1024, np.float32).tobytes()
    request.output_filter.append("y")
    request.model_spec.signature_name = "nope"

    error = _error(server, request)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    response = server.predictions.Predict(predict_request("hpt", [0.0]), timeout=DEADLINE)
    assert list(response.outputs["y"].float_val) == [3.0]
