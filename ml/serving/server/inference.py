"""Predict, Classify, Regress and metadata on one loaded servable, with TF Serving's checks.

The model lookup (name, label, version) is done by the manager before these run; everything from
the signature lookup on happens here, in TF Serving's order (`predict_util.cc`,
`classifier.cc`, `regressor.cc`, `get_model_metadata_impl.cc`).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from ml.serving.server import errors
from ml.serving.server.servable import LoadedServable, SignatureView
from ml.serving.server.tensors import (
    TensorParseError,
    dtype_name,
    ndarray_to_proto,
    proto_to_ndarray,
)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"

# tf.errors codes are the gRPC codes.
_UNKNOWN = grpc.StatusCode.UNKNOWN
_GRPC_CODES = {int(code.value[0]): code for code in grpc.StatusCode}


def _join(names: Iterable[str]) -> str:
    return ",".join(sorted(names))


def make_model_spec(
    spec: model_pb2.ModelSpec, name: str, version: int, signature_name: str | None
) -> None:
    spec.name = name
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name


# -- Predict ---------------------------------------------------------------------------------


def predict(
    servable: LoadedServable, request: predict_pb2.PredictRequest
) -> predict_pb2.PredictResponse:
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.views.get(signature_name)
    if signature is None:
        raise errors.failed_precondition(f'Serving signature key "{signature_name}" not found.')
    if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise errors.internal(
            "Expected prediction signature method_name to be one of "
            f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
            f"Was: {signature.method_name}"
        )
    feeds = _predict_inputs(signature, request)
    aliases = _predict_outputs(signature, request)

    # Session::Run numbers its arguments by sorted feed name; a dtype mismatch is reported by
    # the call frame before anything runs.
    if len(feeds) > 1:
        feeds.sort(key=lambda feed: feed[0])
    for index, (_, expected, value_dtype, _) in enumerate(feeds):
        if value_dtype != expected:
            raise errors.invalid_argument(
                f"Expects arg[{index}] to be {dtype_name(expected)} but "
                f"{dtype_name(value_dtype)} is provided"
            )
    outputs = signature.outputs
    fetch_names = list(dict.fromkeys(outputs[alias].name for alias in aliases))
    values = _run(servable, [(name, value) for name, _, _, value in feeds], fetch_names)
    by_name = dict(zip(fetch_names, values, strict=True))

    response = predict_pb2.PredictResponse()
    make_model_spec(
        response.model_spec, request.model_spec.name, servable.id.version, signature_name
    )
    response_outputs = response.outputs
    for alias in aliases:
        info = outputs[alias]
        ndarray_to_proto(by_name[info.name], info.dtype, response_outputs[alias])
    return response


def _predict_inputs(
    signature: SignatureView, request: predict_pb2.PredictRequest
) -> list[tuple[str, int, int, np.ndarray]]:
    """(feed name, signature dtype, request dtype, value) per signature input."""
    request_inputs = request.inputs
    signature_inputs = signature.inputs
    defaults = signature.defaults
    sent = len(request_inputs)
    expected = len(signature_inputs)
    if sent > expected or sent + len(defaults) < expected:
        sent_extra = set(request_inputs) - set(signature_inputs)
        missing = set(signature_inputs) - set(request_inputs)
        raise errors.invalid_argument(
            f"input size does not match signature: {sent}!={expected} "
            f"len({{{_join(request_inputs)}}}) != len({{{_join(signature_inputs)}}}). "
            f"Sent extra: {{{_join(sent_extra)}}}. Missing but required: {{{_join(missing)}}}."
        )
    feeds: list[tuple[str, int, int, np.ndarray]] = []
    seen = 0
    for alias, info in signature_inputs.items():
        if alias in request_inputs:
            proto = request_inputs[alias]
            seen += 1
        elif alias in defaults:
            proto = defaults[alias]
        else:
            raise errors.invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                "and no default value provided. Inputs expected to be in the request "
                f"{{{_join(request_inputs)}}}, or default input alias set: {_join(defaults)}"
            )
        try:
            value = proto_to_ndarray(proto)
        except TensorParseError:
            raise errors.invalid_argument(f"tensor parsing error: {alias}") from None
        feeds.append((info.name, info.dtype, proto.dtype, value))
    if sent and seen != sent:
        used = [alias for alias in signature_inputs if alias in request_inputs]
        raise errors.invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, "
            f"request input: {_join(request_inputs)}"
        )
    return feeds


def _predict_outputs(
    signature: SignatureView, request: predict_pb2.PredictRequest
) -> tuple[str, ...] | list[str]:
    output_filter = request.output_filter
    if not output_filter:
        return signature.output_aliases
    aliases: list[str] = []
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise errors.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{_join(signature.outputs)}}}."
            )
        if alias in seen:
            raise errors.invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
        aliases.append(alias)
    return aliases


def _run(
    servable: LoadedServable, feeds: list[tuple[str, np.ndarray]], fetches: list[str]
) -> list[np.ndarray]:
    """Run the graph; TensorFlow's own errors keep their code (a bad shape: INVALID_ARGUMENT)."""
    try:
        return servable.run(feeds, fetches)
    except tf.errors.OpError as error:
        code = errors.ServingError(_GRPC_CODES.get(error.error_code, _UNKNOWN), error.message)
        raise code from None


# -- Classify and Regress --------------------------------------------------------------------


def _serialized_examples(request_input: input_pb2.Input) -> list[bytes]:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = request_input.example_list_with_context
        examples = []
        for example in with_context.examples:
            merged = type(example)()
            merged.CopyFrom(with_context.context)
            merged.MergeFrom(example)
            examples.append(merged.SerializeToString())
    else:
        raise errors.invalid_argument("Input is empty.")
    if not examples:
        raise errors.invalid_argument("Input is empty.")
    return examples


def _signature_for(
    servable: LoadedServable, spec: model_pb2.ModelSpec, method: str, kind: str
) -> tuple[str, meta_graph_pb2.SignatureDef]:
    signature_name = spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(signature_name)
    if signature is None:
        raise errors.invalid_argument(f"No signature was found with the name: {signature_name}")
    if signature.method_name != method:
        raise errors.invalid_argument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise errors.invalid_argument("Expected one input Tensor.")
    return signature_name, signature


def _examples_feed(
    signature: meta_graph_pb2.SignatureDef, examples: list[bytes]
) -> list[tuple[str, np.ndarray]]:
    (info,) = signature.inputs.values()
    if info.dtype != types_pb2.DT_STRING:
        raise errors.invalid_argument(
            f"Expects arg[0] to be {dtype_name(info.dtype)} but string is provided"
        )
    return [(info.name, np.array(examples, dtype=object))]


def classify(
    servable: LoadedServable, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    signature_name, signature = _signature_for(
        servable, request.model_spec, CLASSIFY_METHOD, "classification"
    )
    response = classification_pb2.ClassificationResponse()
    _classify_into(servable, signature, request.input, response.result)
    make_model_spec(
        response.model_spec, request.model_spec.name, servable.id.version, signature_name
    )
    return response


def _classify_into(
    servable: LoadedServable,
    signature: meta_graph_pb2.SignatureDef,
    request_input: input_pb2.Input,
    result: classification_pb2.ClassificationResult,
) -> None:
    examples = _serialized_examples(request_input)
    outputs = signature.outputs
    if not 1 <= len(outputs) <= 2:
        raise errors.invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
    classes_info = outputs.get("classes")
    scores_info = outputs.get("scores")
    if classes_info is None and scores_info is None:
        raise errors.invalid_argument(
            "Expected classification signature outputs to contain at least one of classes or "
            "scores."
        )
    fetches = [info.name for info in (classes_info, scores_info) if info is not None]
    values = _run(servable, _examples_feed(signature, examples), fetches)
    classes = values.pop(0) if classes_info is not None else None
    scores = values.pop(0) if scores_info is not None else None
    batch = len(examples)
    for name, array in (("classes", classes), ("scores", scores)):
        if array is not None and (array.ndim != 2 or array.shape[0] != batch):
            raise errors.invalid_argument(
                f"Expected {name} Tensor of shape [batch_size num_classes] with batch_size "
                f"{batch}. Got: {list(array.shape)}"
            )
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    for row in range(batch):
        classifications = result.classifications.add()
        for column in range(width):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode() if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])


def regress(
    servable: LoadedServable, request: regression_pb2.RegressionRequest
) -> regression_pb2.RegressionResponse:
    signature_name, signature = _signature_for(
        servable, request.model_spec, REGRESS_METHOD, "regression"
    )
    response = regression_pb2.RegressionResponse()
    _regress_into(servable, signature, request.input, response.result)
    make_model_spec(
        response.model_spec, request.model_spec.name, servable.id.version, signature_name
    )
    return response


def _regress_into(
    servable: LoadedServable,
    signature: meta_graph_pb2.SignatureDef,
    request_input: input_pb2.Input,
    result: regression_pb2.RegressionResult,
) -> None:
    examples = _serialized_examples(request_input)
    if len(signature.outputs) != 1:
        raise errors.invalid_argument("Expected one output Tensor.")
    info = signature.outputs.get("outputs")
    if info is None:
        raise errors.failed_precondition(
            "No regression outputs found in signature. Expected one output Tensor named 'outputs'."
        )
    (values,) = _run(servable, _examples_feed(signature, examples), [info.name])
    batch = len(examples)
    if values.shape not in ((batch,), (batch, 1)):
        raise errors.invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
            f"got {list(values.shape)}"
        )
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)


def multi_inference(
    servable: LoadedServable, request: inference_pb2.MultiInferenceRequest
) -> inference_pb2.MultiInferenceResponse:
    """All tasks on one servable (TF Serving requires one model for all tasks)."""
    if not request.tasks:
        raise errors.invalid_argument("Tasks is empty")
    names = {task.model_spec.name for task in request.tasks}
    if len(names) != 1:
        raise errors.invalid_argument(
            "All ModelSpecs in a MultiInferenceRequest must access the same model name."
        )
    signature_names = [
        task.model_spec.signature_name or DEFAULT_SIGNATURE for task in request.tasks
    ]
    if len(set(signature_names)) != len(signature_names):
        raise errors.invalid_argument("Duplicate evaluation of signature")
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            name, signature = _signature_for(
                servable, task.model_spec, CLASSIFY_METHOD, "classification"
            )
            _classify_into(servable, signature, request.input, result.classification_result)
        elif task.method_name == REGRESS_METHOD:
            name, signature = _signature_for(
                servable, task.model_spec, REGRESS_METHOD, "regression"
            )
            _regress_into(servable, signature, request.input, result.regression_result)
        else:
            raise errors.invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        make_model_spec(result.model_spec, task.model_spec.name, servable.id.version, name)
    return response


# -- GetModelMetadata ------------------------------------------------------------------------


def check_metadata_request(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    if not request.metadata_field:
        raise errors.invalid_argument(
            "GetModelMetadataRequest must specify at least one metadata_field"
        )
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise errors.invalid_argument(f"Metadata field {field} is not supported")


def model_metadata(
    servable: LoadedServable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    make_model_spec(response.model_spec, request.model_spec.name, servable.id.version, None)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signatures.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
