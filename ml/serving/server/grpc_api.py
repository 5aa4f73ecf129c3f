"""gRPC servicers: the classes generated in `tensorflow-serving-api`, delegating to the handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ml.serving.server.errors import ServingError, truncate_message
from ml.serving.server.handlers import ServingHandlers

Response = TypeVar("Response")


def _answer(context: grpc.ServicerContext, call: Callable[[], Response]) -> Response:
    try:
        return call()
    except ServingError as error:
        context.abort(error.code, truncate_message(error.message))
        raise  # unreachable: abort raises


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, handlers: ServingHandlers) -> None:
        self._handlers = handlers

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.predict(request))

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.classify(request))

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.regress(request))

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.multi_inference(request))

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.get_model_metadata(request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, handlers: ServingHandlers) -> None:
        self._handlers = handlers

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.get_model_status(request))

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _answer(context, lambda: self._handlers.reload_config(request))


def add_servicers(server: grpc.Server, handlers: ServingHandlers) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(handlers), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(handlers), server)
