"""The model server: manager + gRPC + REST + config file polling, started and stopped as one."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server.config import config_from_flags, read_config_file
from ml.serving.server.errors import ServingError
from ml.serving.server.grpc_api import add_servicers
from ml.serving.server.handlers import ServingHandlers
from ml.serving.server.manager import ManagerOptions, ModelManager
from ml.serving.server.metrics import ServerMetrics
from ml.serving.server.rest_api import RestApi

logger = logging.getLogger(__name__)

# TF Serving accepts messages up to 2 GB.
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True)
class ServerOptions:
    """`tensorflow_model_server`'s flags; `rest_api_port=None` means no REST API (flag 0),
    and port 0 here binds a free port (tests)."""

    port: int = 8500
    rest_api_port: int | None = 8501
    host: str = "0.0.0.0"  # noqa: S104 - TF Serving listens on every interface
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    file_system_poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    grpc_max_threads: int = 16
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0


class ModelServer:
    def __init__(
        self,
        options: ServerOptions,
        config: model_server_config_pb2.ModelServerConfig | None = None,
    ) -> None:
        """`config` overrides the options' model flags and file (handy in-process)."""
        self.options = options
        self.metrics = ServerMetrics()
        session_config = config_pb2.ConfigProto(
            intra_op_parallelism_threads=options.tensorflow_intra_op_parallelism,
            inter_op_parallelism_threads=options.tensorflow_inter_op_parallelism,
        )
        self.manager = ModelManager(
            ManagerOptions(
                file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
                max_num_load_retries=options.max_num_load_retries,
                load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
                allow_version_labels_for_unavailable_models=(
                    options.allow_version_labels_for_unavailable_models
                ),
                enable_model_warmup=options.enable_model_warmup,
                num_request_iterations_for_warmup=options.num_request_iterations_for_warmup,
                session_config=session_config,
            ),
            listener=self.metrics,
        )
        self.handlers = ServingHandlers(self.manager, self.metrics)
        self._initial_config = config
        self._config_text: str | None = None
        self._grpc_server: grpc.Server | None = None
        self._rest: RestApi | None = None
        self._stop = threading.Event()
        self._config_poller: threading.Thread | None = None
        self.grpc_port = 0
        self.rest_port: int | None = None

    def _startup_config(self) -> model_server_config_pb2.ModelServerConfig:
        if self._initial_config is not None:
            return self._initial_config
        if self.options.model_config_file:
            self._config_text, config = read_config_file(self.options.model_config_file)
            return config
        if not self.options.model_base_path:
            raise ValueError("Both --model_base_path and --model_config_file are empty!")
        return config_from_flags(self.options.model_name, self.options.model_base_path)

    def start(self) -> ModelServer:
        """Load every configured model (blocks until they are AVAILABLE or failed), then listen.

        A malformed config file raises (there is nothing to serve); a model or label that
        fails is logged and reported in GetModelStatus, and the server serves the rest.
        """
        config = self._startup_config()
        try:
            self.manager.apply_config(config)
        except ServingError as error:
            logger.error("Some models failed at start-up, serving the others: %s", error.message)
        self.manager.start_polling()

        self._grpc_server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.options.grpc_max_threads, thread_name_prefix="grpc"
            ),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_servicers(self._grpc_server, self.handlers)
        address = f"{self.options.host}:{self.options.port}"
        try:
            self.grpc_port = self._grpc_server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio raises where older versions returned 0
            raise OSError(f"Could not bind gRPC port {address}: {error}") from None
        if self.grpc_port == 0:
            raise OSError(f"Could not bind gRPC port {address}")
        self._grpc_server.start()
        logger.info("Running gRPC ModelServer at %s:%d ...", self.options.host, self.grpc_port)
        if self.options.rest_api_port is not None:
            self._rest = RestApi(self.handlers, self.options.host, self.options.rest_api_port)
            self._rest.start()
            self.rest_port = self._rest.port
            logger.info("Exporting HTTP/REST API at %s:%d ...", self.options.host, self.rest_port)
        if self.options.model_config_file and self.options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(
                target=self._poll_config_file, name="model-config-poll", daemon=True
            )
            self._config_poller.start()
        return self

    def _poll_config_file(self) -> None:
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                text, config = read_config_file(self.options.model_config_file)
            except ServingError as error:
                logger.error("%s (keeping the current config)", error.message)
                self.metrics.config_reloads.labels("error").inc()
                continue
            if text == self._config_text:
                continue
            self._config_text = text
            try:
                self.manager.apply_config(config)
                self.metrics.config_reloads.labels("ok").inc()
                logger.info("Applied the new model config file")
            except ServingError as error:
                logger.error("Model config file reload failed: %s", error.message)
                self.metrics.config_reloads.labels("error").inc()
            except Exception:
                logger.exception("Model config file reload failed")

    def wait(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        if self._rest is not None:
            self._rest.stop()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait()
        self.manager.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
