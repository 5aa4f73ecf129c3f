"""TF Serving's REST API (predict, status, metadata) and the Prometheus metrics page.

`POST /v1/models/<m>[/versions/<n>|/labels/<l>]:predict` takes `{"instances": [...]}` (row
format, answers `predictions`) or `{"inputs": ...}` (columnar, answers `outputs`);
`GET /v1/models/<m>[...]` is GetModelStatus and `GET .../metadata` is GetModelMetadata. Errors are
`{"error": "<message>"}` with TF Serving's HTTP codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from ml.serving.server import errors, inference
from ml.serving.server.errors import ServingError, truncate_message
from ml.serving.server.handlers import ServingHandlers
from ml.serving.server.servable import LoadedServable
from ml.serving.server.tensors import ndarray_to_proto, numpy_dtype, proto_to_ndarray

logger = logging.getLogger(__name__)

METRICS_PATHS = ("/monitoring/prometheus/metrics", "/metrics")
_MODEL_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[a-z]+))?/?$"
)
_HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


def http_status(error: ServingError) -> int:
    return int(_HTTP_CODES.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR))


# -- JSON <-> tensors ------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_strings(item) for item in value]
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError) as error:
            raise errors.invalid_argument(f"Unable to base64 decode: {error}") from None
    if isinstance(value, str):
        return value.encode()
    raise errors.invalid_argument(f'Expected a string or {{"b64": ...}}, got: {value!r}')


def json_to_array(value: Any, dtype: int, alias: str) -> np.ndarray:
    np_dtype = numpy_dtype(dtype)
    try:
        if dtype == types_pb2.DT_STRING:
            array = np.array(_decode_strings(value), dtype=object)
            if array.dtype != object:  # ragged nesting collapsed into an object array of lists
                raise ValueError("ragged")
            return array
        return np.array(value, dtype=np_dtype)
    except ServingError:
        raise
    except (ValueError, TypeError) as error:
        raise errors.invalid_argument(
            f"Failed to process input: {alias} as {np.dtype(np_dtype).name}: {error}"
        ) from None


def _named_inputs(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def json_to_request(
    body: dict[str, Any],
    signature: meta_graph_pb2.SignatureDef,
    request: predict_pb2.PredictRequest,
) -> str:
    """Fill `request.inputs` from a REST body; returns the format ('row' or 'columnar')."""
    inputs = signature.inputs
    if "instances" in body and "inputs" in body:
        raise errors.invalid_argument("Not both 'instances' and 'inputs' can be specified.")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise errors.invalid_argument("'instances' must be a JSON list")
        if instances and all(_named_inputs(row) for row in instances):
            columns: dict[str, list[Any]] = {}
            for index, row in enumerate(instances):
                if set(row) != set(inputs) and len(inputs) > 0:
                    missing = sorted(set(inputs) - set(row)) or sorted(set(row) - set(inputs))
                    raise errors.invalid_argument(
                        f"Failed to process element: {index} of 'instances' list. JSON object: "
                        f"does not match the signature inputs (offending key: {missing[0]})"
                    )
                for alias, value in row.items():
                    columns.setdefault(alias, []).append(value)
        else:
            if len(inputs) != 1:
                raise errors.invalid_argument(
                    "Expected the 'instances' list to hold JSON objects naming the inputs "
                    f"{{{','.join(sorted(inputs))}}}"
                )
            columns = {next(iter(inputs)): instances}
        fmt = "row"
    elif "inputs" in body:
        value = body["inputs"]
        columns = dict(value) if _named_inputs(value) else {next(iter(inputs), ""): value}
        fmt = "columnar"
    else:
        raise errors.invalid_argument("Missing 'inputs' or 'instances' key")
    for alias, value in columns.items():
        info = inputs.get(alias)
        dtype = info.dtype if info is not None else types_pb2.DT_FLOAT
        ndarray_to_proto(json_to_array(value, dtype, alias), dtype, request.inputs[alias])
    return fmt


def _json_values(array: np.ndarray) -> Any:
    if array.dtype == object:
        return _strings_to_json(array.tolist())
    return array.tolist()


def _strings_to_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings_to_json(item) for item in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return value


def response_to_json(response: predict_pb2.PredictResponse, fmt: str) -> dict[str, Any]:
    arrays = {alias: proto_to_ndarray(tensor) for alias, tensor in response.outputs.items()}
    if fmt == "columnar":
        if len(arrays) == 1:
            return {"outputs": _json_values(next(iter(arrays.values())))}
        return {"outputs": {alias: _json_values(array) for alias, array in arrays.items()}}
    if len(arrays) == 1:
        return {"predictions": _json_values(next(iter(arrays.values())))}
    batch_sizes = {
        alias: (array.shape[0] if array.ndim else None) for alias, array in arrays.items()
    }
    sizes = set(batch_sizes.values())
    if len(sizes) != 1 or None in sizes:
        raise errors.invalid_argument(
            "Tensors in the output have inconsistent batch sizes "
            f"{batch_sizes}; use the columnar format ('inputs') for this signature"
        )
    (batch,) = sizes
    columns = {alias: _json_values(array) for alias, array in arrays.items()}
    return {
        "predictions": [
            {alias: values[row] for alias, values in columns.items()} for row in range(batch or 0)
        ]
    }


# -- the HTTP server -------------------------------------------------------------------------


class RestApi:
    def __init__(self, handlers: ServingHandlers, host: str, port: int) -> None:
        self.handlers = handlers
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "ml-model-server"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("REST %s", format % args)

            def do_GET(self) -> None:
                api.dispatch(self, "GET")

            def do_POST(self) -> None:
                api.dispatch(self, "POST")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="rest-api", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def dispatch(self, http: BaseHTTPRequestHandler, method: str) -> None:
        path = http.path.split("?", 1)[0]
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        try:
            if method == "GET" and path in METRICS_PATHS:
                body, content_type = self.handlers.metrics.exposition()
                self._send(http, 200, body, content_type)
                return
            match = _MODEL_PATH.match(path)
            if match is None:
                raise errors.ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}"
                )
            spec = model_pb2.ModelSpec(name=match["name"])
            if match["version"] is not None:
                spec.version.value = int(match["version"])
            elif match["label"] is not None:
                spec.version_label = match["label"]
            if method == "GET" and match["verb"] is None:
                payload = self._metadata(spec) if match["metadata"] else self._status(spec)
            elif method == "POST" and match["verb"] == "predict" and not match["metadata"]:
                payload = self._predict(spec, raw)
            elif method == "POST" and match["verb"] in ("classify", "regress"):
                raise errors.ServingError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"REST :{match['verb']} is not implemented by the local server; use gRPC",
                )
            else:
                raise errors.ServingError(
                    grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {path}"
                )
            self._send_json(http, 200, payload)
        except ServingError as error:
            self._send_json(http, http_status(error), {"error": truncate_message(error.message)})
        except Exception as error:  # never let a request take the REST thread down
            logger.exception("REST %s %s failed", method, path)
            self._send_json(http, 500, {"error": f"{type(error).__name__}: {error}"})

    def _predict(self, spec: model_pb2.ModelSpec, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as error:
            raise errors.invalid_argument(f"JSON Parse error: {error}") from None
        if not isinstance(body, dict):
            raise errors.invalid_argument("JSON Value: request body must be a JSON object")
        signature_name = body.get("signature_name") or ""
        if not isinstance(signature_name, str):
            raise errors.invalid_argument("'signature_name' must be a string")
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(spec)
        request.model_spec.signature_name = signature_name
        formats: list[str] = []

        def run(servable: LoadedServable) -> predict_pb2.PredictResponse:
            signature = servable.signatures.get(signature_name or inference.DEFAULT_SIGNATURE)
            if signature is None:
                raise errors.failed_precondition(
                    f'Serving signature key "{signature_name or inference.DEFAULT_SIGNATURE}" '
                    "not found."
                )
            formats.append(json_to_request(body, signature, request))
            return inference.predict(servable, request)

        response = self.handlers.serve("predict", request, run)
        return response_to_json(response, formats[0])

    def _status(self, spec: model_pb2.ModelSpec) -> dict[str, Any]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        response = self.handlers.get_model_status(request)
        return json_format.MessageToDict(
            response,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )

    def _metadata(self, spec: model_pb2.ModelSpec) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[inference.SIGNATURE_DEF_FIELD]
        )
        response = self.handlers.get_model_metadata(request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[inference.SIGNATURE_DEF_FIELD].Unpack(signature_map)
        model_spec = json_format.MessageToDict(
            response.model_spec,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        if "version" in model_spec and isinstance(model_spec["version"], dict):
            model_spec["version"] = model_spec["version"].get("value", "0")
        return {
            "model_spec": model_spec,
            "metadata": {
                inference.SIGNATURE_DEF_FIELD: json_format.MessageToDict(
                    signature_map, preserving_proto_field_name=True
                )
            },
        }

    @staticmethod
    def _send_json(http: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        RestApi._send(http, status, json.dumps(payload).encode(), "application/json")

    @staticmethod
    def _send(http: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
        http.send_response(status)
        http.send_header("Content-Type", content_type)
        http.send_header("Content-Length", str(len(body)))
        http.end_headers()
        http.wfile.write(body)
