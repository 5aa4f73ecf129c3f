"""The RPCs, independent of transport: gRPC and REST both call these and get TF Serving's answers.

Each method returns the response proto or raises `ServingError`. The order of checks is TF
Serving's: ModelSpec present, name, label, servable lookup, then the signature (`inference.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from ml.serving.server import errors, inference
from ml.serving.server.errors import ServingError
from ml.serving.server.manager import ModelManager
from ml.serving.server.metrics import ServerMetrics
from ml.serving.server.servable import LoadedServable

logger = logging.getLogger(__name__)

Response = TypeVar("Response")


class ServingHandlers:
    def __init__(self, manager: ModelManager, metrics: ServerMetrics) -> None:
        self.manager = manager
        self.metrics = metrics

    def serve(
        self,
        api: str,
        request: object,
        run: Callable[[LoadedServable], Response],
        before: Callable[[], None] | None = None,
    ) -> Response:
        """Check the ModelSpec, hold the servable for the call, and count it."""
        started = time.perf_counter()
        spec = request.model_spec  # type: ignore[attr-defined]
        version = ""
        code = "OK"
        try:
            if not request.HasField("model_spec"):  # type: ignore[attr-defined]
                raise errors.invalid_argument("Missing ModelSpec")
            if before is not None:
                before()
            with self.manager.resolve(spec) as servable:
                version = str(servable.id.version)
                return run(servable)
        except ServingError as error:
            code = error.code.name
            raise
        except Exception as error:  # a bug here must answer INTERNAL, not kill the worker
            logger.exception("%s failed", api)
            code = "INTERNAL"
            raise errors.internal(f"{type(error).__name__}: {error}") from error
        finally:
            self.metrics.observe(
                model=spec.name,
                version=version,
                api=api,
                code=code,
                seconds=time.perf_counter() - started,
            )

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self.serve("predict", request, lambda s: inference.predict(s, request))

    def classify(
        self, request: classification_pb2.ClassificationRequest
    ) -> classification_pb2.ClassificationResponse:
        return self.serve("classify", request, lambda s: inference.classify(s, request))

    def regress(
        self, request: regression_pb2.RegressionRequest
    ) -> regression_pb2.RegressionResponse:
        return self.serve("regress", request, lambda s: inference.regress(s, request))

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise errors.invalid_argument("Tasks is empty")
        first = request.tasks[0]
        return self.serve("multi_inference", first, lambda s: inference.multi_inference(s, request))

    def get_model_metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return self.serve(
            "get_model_metadata",
            request,
            lambda s: inference.model_metadata(s, request),
            before=lambda: inference.check_metadata_request(request),
        )

    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise errors.invalid_argument("Missing ModelSpec")
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.manager.version_statuses(request.model_spec):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = status.state  # type: ignore[assignment]
            entry.status.error_code = status.error_code  # type: ignore[assignment]
            entry.status.error_message = status.error_message
        return response

    def reload_config(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """Replace the model list; the error, if any, is both raised and in the response."""
        for index, model in enumerate(request.config.model_config_list.config):
            logger.info(
                "Config entry index: %d path: %s name: %s platform: %s",
                index,
                model.base_path,
                model.name,
                model.model_platform,
            )
        try:
            self.manager.apply_config(request.config)
        except ServingError as error:
            logger.error("ServerCore::ReloadConfig failed: %s", error.message)
            self.metrics.config_reloads.labels("error").inc()
            raise
        self.metrics.config_reloads.labels("ok").inc()
        return model_management_pb2.ReloadConfigResponse()
