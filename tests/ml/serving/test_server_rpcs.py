"""GetModelMetadata, Classify, Regress and MultiInference against a real server."""

from __future__ import annotations

import grpc
import pytest
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    regression_pb2,
)

from tests.ml.serving.conftest import (
    DEADLINE,
    ModelLibrary,
    RunningServer,
    StartServer,
    install_version,
    model_config,
    rpc_error,
)


@pytest.fixture
def server(models: ModelLibrary, start_server: StartServer, tmp_path) -> RunningServer:
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    return start_server(model_config(("hpt", base)))


def _metadata_request(name: str = "hpt", fields: tuple[str, ...] = ("signature_def",)):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = name
    request.metadata_field.extend(fields)
    return request


def test_metadata_packs_every_signature_as_a_signature_def_map(server: RunningServer):
    response = server.predictions.GetModelMetadata(_metadata_request(), timeout=DEADLINE)

    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec.name == "hpt"
    assert response.model_spec.version.value == 1
    assert {"serving_default", "two_inputs", "classify_x_to_y", "regress_x_to_y"} <= set(
        signatures.signature_def
    )
    default = signatures.signature_def["serving_default"]
    assert set(default.inputs) == {"x"}
    assert set(default.outputs) == {"y"}
    assert default.method_name == "tensorflow/serving/predict"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (get_model_metadata_pb2.GetModelMetadataRequest(), grpc.StatusCode.INVALID_ARGUMENT,
         "Missing ModelSpec"),
        (_metadata_request(fields=()), grpc.StatusCode.INVALID_ARGUMENT,
         "GetModelMetadataRequest must specify at least one metadata_field"),
        (_metadata_request(fields=("signature_def", "other")), grpc.StatusCode.INVALID_ARGUMENT,
         "Metadata field other is not supported"),
        (_metadata_request(name="nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
    ],
    ids=["no-model-spec", "no-field", "unsupported-field", "unknown-model"],
)  # fmt: skip
def test_metadata_errors(server: RunningServer, request_, code, message):
    error = rpc_error(lambda: server.predictions.GetModelMetadata(request_, timeout=DEADLINE))

    assert (error.code(), error.details()) == (code, message)


def _examples(*xs: float) -> input_pb2.Input:
    request_input = input_pb2.Input()
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].CopyFrom(
            feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[x]))
        )
        request_input.example_list.examples.append(example)
    return request_input


def test_regress_answers_one_value_per_example(server: RunningServer):
    request = regression_pb2.RegressionRequest(input=_examples(2.0, 4.0))
    request.model_spec.name = "hpt"
    request.model_spec.signature_name = "regress_x_to_y"

    response = server.predictions.Regress(request, timeout=DEADLINE)

    assert [r.value for r in response.result.regressions] == [3.0, 4.0]
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "regress_x_to_y"


def test_classify_answers_labels_and_scores(server: RunningServer):
    request = classification_pb2.ClassificationRequest(input=_examples(2.0))
    request.model_spec.name = "hpt"
    request.model_spec.signature_name = "classify_x_to_y"

    response = server.predictions.Classify(request, timeout=DEADLINE)

    (classifications,) = response.result.classifications
    assert [(c.label, c.score) for c in classifications.classes] == [("y", 3.0), ("minus_y", -3.0)]


def test_classify_and_regress_name_an_unknown_signature_invalid_argument(server: RunningServer):
    classify = classification_pb2.ClassificationRequest(input=_examples(1.0))
    classify.model_spec.name = "hpt"
    classify.model_spec.signature_name = "nope"
    regress = regression_pb2.RegressionRequest(input=_examples(1.0))
    regress.model_spec.name = "hpt"
    regress.model_spec.signature_name = "nope"

    for call in (
        lambda: server.predictions.Classify(classify, timeout=DEADLINE),
        lambda: server.predictions.Regress(regress, timeout=DEADLINE),
    ):
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "No signature was found with the name: nope"


def test_multi_inference_runs_classify_and_regress_on_one_input(server: RunningServer):
    request = inference_pb2.MultiInferenceRequest(input=_examples(2.0))
    for signature, method in (
        ("classify_x_to_y", "tensorflow/serving/classify"),
        ("regress_x_to_y", "tensorflow/serving/regress"),
    ):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "hpt"
        task.model_spec.signature_name = signature

    response = server.predictions.MultiInference(request, timeout=DEADLINE)

    classify, regress = response.results
    assert classify.classification_result.classifications[0].classes[0].score == 3.0
    assert regress.regression_result.regressions[0].value == 3.0
