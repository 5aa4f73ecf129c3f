"""`PredictionClient`: the one object in the project that talks gRPC to TF Serving.

- One channel per client, created on first use and again after a fork (web server and Celery
  prefork children never reuse the parent's channel), shared by every thread of the process.
- Every call has a deadline: the constructor's `timeout`, or the caller's remaining budget.
- UNAVAILABLE is retried once if the budget has time left; UNAVAILABLE and DEADLINE_EXCEEDED then
  raise `ModelServerUnavailable`, and enough of them in a row open a circuit breaker, after which
  calls fail in microseconds (`CircuitOpen`) until a probe call gets through.
- Results are frozen dataclasses; no proto leaves this package.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from ml.serving.client import protos
from ml.serving.client.breaker import CircuitBreaker
from ml.serving.client.config import ModelServerConfig, model_server_config
from ml.serving.client.errors import (
    TRANSIENT_CODES,
    CircuitOpen,
    ModelResponseError,
    ModelServerError,
    ModelServerUnavailable,
    error_from_status,
)
from ml.serving.client.results import (
    ModelConfig,
    ModelMetadata,
    ModelVersionStatus,
    Recommendations,
    SignatureInfo,
    TensorInfo,
)
from ml.serving.client.tensors import (
    float_matrix,
    int32_scalar,
    read_floats,
    read_strings,
    string_matrix,
    string_vector,
)

logger = logging.getLogger(__name__)

# observer(method, outcome, seconds): see PredictionClient.__init__.
Observer = Callable[[str, str, float], None]

DEFAULT_TARGET = "localhost:8500"
DEFAULT_MODEL = "recommender"
RECOMMEND_SIGNATURE = "recommend"
SIMILAR_SIGNATURE = "similar"
OUTPUTS = ("item_ids", "scores")

# TF Serving closes connections that ping more often than every 5 minutes (`too_many_pings`).
MIN_KEEPALIVE_SECONDS = 300.0
# Below this much budget a retry cannot do anything useful.
MIN_RETRY_SECONDS = 0.001

_SERVICES: dict[str, tuple[str, Any, Any]] = {
    "predict": (
        "/tensorflow.serving.PredictionService/Predict",
        protos.predict_pb2.PredictRequest,
        protos.predict_pb2.PredictResponse,
    ),
    "metadata": (
        "/tensorflow.serving.PredictionService/GetModelMetadata",
        protos.get_model_metadata_pb2.GetModelMetadataRequest,
        protos.get_model_metadata_pb2.GetModelMetadataResponse,
    ),
    "status": (
        "/tensorflow.serving.ModelService/GetModelStatus",
        protos.get_model_status_pb2.GetModelStatusRequest,
        protos.get_model_status_pb2.GetModelStatusResponse,
    ),
    "reload": (
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
        protos.model_management_pb2.ReloadConfigRequest,
        protos.model_management_pb2.ReloadConfigResponse,
    ),
}

_STATE_NAMES = protos.get_model_status_pb2.ModelVersionStatus.State
_DTYPE_NAMES = protos.types_pb2.DataType
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class PredictionClient:
    """A client for one TF Serving (or local model server) address.

    Create one per process and share it (e.g. a module-level instance behind a function); it is
    thread-safe and fork-safe. Nothing connects until the first call.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        model_name: str = DEFAULT_MODEL,
        timeout: float = 0.1,
        admin_timeout: float = 30.0,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        max_receive_message_bytes: int = 64 * 1024 * 1024,
        keepalive_time: float | None = MIN_KEEPALIVE_SECONDS,
        max_reconnect_backoff: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        recommend_signature: str = RECOMMEND_SIGNATURE,
        similar_signature: str = SIMILAR_SIGNATURE,
        observer: Observer | None = None,
    ) -> None:
        """
        target: `host:port` of the gRPC API (TF Serving's default port is 8500); any gRPC target
            works, e.g. `dns:///model-server:8500` with `("grpc.lb_policy_name", "round_robin")`.
        timeout: default deadline of Predict calls, in seconds; pass `timeout=` per call to
            spend the request's remaining budget instead.
        admin_timeout: default deadline of model_status, model_metadata and reload_config
            (a reload returns only once new models are loaded).
        failure_threshold, reset_timeout: the circuit opens after this many transient failures in
            a row and lets a probe through after `reset_timeout` seconds.
        keepalive_time: seconds between HTTP/2 pings on an idle connection; at least 300 (TF
            Serving's minimum), None for no pings.
        observer: called after every call as `observer(method, outcome, seconds)`, with method
            "predict", "metadata", "status" or "reload" and outcome "OK", a gRPC code name
            ("UNAVAILABLE", ...), "CIRCUIT_OPEN" or "CLIENT_ERROR": where metrics hook in.
        max_reconnect_backoff: upper bound of gRPC's reconnect backoff (its default is 120 s,
            which would keep a restarted server unused for up to two minutes).
        """
        if timeout <= 0 or admin_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if keepalive_time is not None and keepalive_time < MIN_KEEPALIVE_SECONDS:
            raise ValueError(
                f"keepalive_time must be at least {MIN_KEEPALIVE_SECONDS:.0f} s: TF Serving "
                "closes connections that ping more often (too_many_pings)"
            )
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.admin_timeout = admin_timeout
        self.recommend_signature = recommend_signature
        self.similar_signature = similar_signature
        self._credentials = credentials
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_receive_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff * 1000)),
            ("grpc.primary_user_agent", "recommender-prediction-client"),
        ]
        if keepalive_time is not None:
            options += [
                ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 0),
            ]
        overridden = {name for name, _ in channel_options}
        self._channel_options = [o for o in options if o[0] not in overridden] + list(
            channel_options
        )
        self._breaker = CircuitBreaker(failure_threshold, reset_timeout)
        self._observer = observer
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable] | None = None
        # Channels inherited through fork: kept referenced, never closed or collected in the
        # child, because tearing one down would touch the parent's gRPC state.
        self._inherited: list[grpc.Channel] = []
        self.channels_created = 0
        _live_clients.add(self)

    # --- the channel -------------------------------------------------------------------------

    def _get_stubs(self) -> dict[str, grpc.UnaryUnaryMultiCallable]:
        stubs = self._stubs
        if stubs is not None and self._pid == os.getpid():
            return stubs
        with self._lock:
            if self._pid != os.getpid():  # a fork the at-fork hook did not see
                self._forget_parent_channel()
            if self._stubs is None:
                channel = (
                    grpc.secure_channel(self.target, self._credentials, self._channel_options)
                    if self._credentials is not None
                    else grpc.insecure_channel(self.target, self._channel_options)
                )
                self._stubs = {
                    name: channel.unary_unary(
                        path,
                        request_serializer=request.SerializeToString,
                        response_deserializer=response.FromString,
                        _registered_method=True,
                    )
                    for name, (path, request, response) in _SERVICES.items()
                }
                self._channel = channel
                self.channels_created += 1
            return self._stubs

    def _forget_parent_channel(self) -> None:
        if self._channel is not None:
            self._inherited.append(self._channel)
        self._channel = None
        self._stubs = None
        self._pid = os.getpid()
        self._breaker.reset()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._forget_parent_channel()

    def close(self) -> None:
        """Close the channel; a later call opens a new one."""
        with self._lock:
            if self._pid != os.getpid():  # the parent's channel: keep it, untouched
                self._forget_parent_channel()
                return
            channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def circuit_state(self) -> str:
        """The breaker state, "closed", "open" or "half_open", for health checks and metrics."""
        return self._breaker.state

    # --- calls -------------------------------------------------------------------------------

    def _call(
        self, method: str, build: Callable[[], Any], timeout: float | None, *, guarded: bool
    ) -> Any:
        observer = self._observer
        if observer is None:
            return self._attempt(method, build, timeout, guarded=guarded)
        started = time.perf_counter()
        outcome = "OK"
        try:
            return self._attempt(method, build, timeout, guarded=guarded)
        except CircuitOpen:
            outcome = "CIRCUIT_OPEN"
            raise
        except ModelServerError as error:
            outcome = error.code.name if error.code is not None else "BAD_RESPONSE"
            raise
        except BaseException:
            outcome = "CLIENT_ERROR"
            raise
        finally:
            try:
                observer(method, outcome, time.perf_counter() - started)
            except Exception:
                logger.exception("PredictionClient observer failed")

    def _attempt(
        self, method: str, build: Callable[[], Any], timeout: float | None, *, guarded: bool
    ) -> Any:
        """One RPC within `timeout` seconds, with one retry on UNAVAILABLE inside that budget.

        `guarded` calls (Predict) go through the circuit breaker, which is asked before the
        request is even built (`build()`), so an open circuit costs next to nothing; admin calls
        always try.
        """
        budget = self.timeout if timeout is None else timeout
        if budget <= 0:
            raise ModelServerUnavailable(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no time left in the request's budget"
            )
        deadline = time.monotonic() + budget
        breaker = self._breaker
        if guarded:
            breaker.before_call()
        try:
            request = build()
            stub = self._get_stubs()[method]
            remaining = budget
            retried = False
            while True:
                try:
                    response = stub(request, timeout=remaining)
                    break
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    if code is grpc.StatusCode.UNAVAILABLE and not retried:
                        remaining = deadline - time.monotonic()
                        if remaining > MIN_RETRY_SECONDS:
                            retried = True
                            continue
                    failure = error_from_status(code, error.details() or "")  # type: ignore[attr-defined]
                    if guarded:
                        if code in TRANSIENT_CODES:
                            breaker.record_failure()
                        else:
                            breaker.record_success()  # it answered: the server is up
                    raise failure from error
        except ModelServerError:
            raise
        except BaseException:
            if guarded:
                breaker.release()
            raise
        if guarded:
            breaker.record_success()
        return response

    def _model_spec(
        self,
        spec: Any,
        model: str | None,
        version: int | None,
        label: str | None,
        signature: str = "",
    ) -> str:
        if version is not None and label is not None:
            raise ValueError("address a model by version or by label, not both")
        name = model or self.model_name
        spec.name = name
        if version is not None:
            spec.version.value = version
        elif label is not None:
            spec.version_label = label
        if signature:
            spec.signature_name = signature
        return name

    def _predict(
        self,
        fill_inputs: Callable[[Any], None],
        rows: int,
        *,
        signature: str,
        model: str | None,
        version: int | None,
        label: str | None,
        timeout: float | None,
    ) -> list[Recommendations]:
        if version is not None and label is not None:
            raise ValueError("address a model by version or by label, not both")
        name = model or self.model_name

        def build() -> Any:
            request = protos.predict_pb2.PredictRequest()
            self._model_spec(request.model_spec, name, version, label, signature)
            fill_inputs(request.inputs)
            request.output_filter.extend(OUTPUTS)
            return request

        response = self._call("predict", build, timeout, guarded=True)
        return _ranked_lists(response, rows, name)

    def recommend(
        self,
        history: Sequence[str],
        weights: Sequence[float] | None = None,
        k: int = 10,
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> Recommendations:
        """Top `k` items for one user's history (item ids, oldest first, as the model expects).

        `weights` defaults to 1.0 per item. `version` or `label` (`stable`, `canary`) picks the
        model version; neither means the latest. `timeout` is the time left in the request's
        budget, in seconds.
        """
        batch_weights = None if weights is None else [weights]
        return self.recommend_batch(
            [history],
            batch_weights,
            k,
            model=model,
            version=version,
            label=label,
            timeout=timeout,
        )[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        weights: Sequence[Sequence[float]] | None = None,
        k: int = 10,
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> list[Recommendations]:
        """`recommend` for several users in one Predict; results in the same order."""
        if not histories:
            return []
        _check_k(k)
        for history in histories:
            if isinstance(history, str):
                raise TypeError("a history is a sequence of item ids, not one string")
        if weights is None:
            weights = [[1.0] * len(history) for history in histories]
        elif len(weights) != len(histories) or any(
            len(w) != len(h) for w, h in zip(weights, histories, strict=True)
        ):
            raise ValueError("weights must have the same shape as histories")
        # At least one column: a [n, 0] tensor is legal but some graphs cannot take it.
        width = max(1, max(len(history) for history in histories))
        weight_rows = weights  # narrowed: the closure below sees a list

        def fill_inputs(inputs: Any) -> None:
            string_matrix(histories, width, into=inputs["history"])
            float_matrix(weight_rows, width, into=inputs["history_weights"])
            int32_scalar(k, into=inputs["k"])

        return self._predict(
            fill_inputs,
            len(histories),
            signature=self.recommend_signature,
            model=model,
            version=version,
            label=label,
            timeout=timeout,
        )

    def similar(
        self,
        item_ids: Sequence[str],
        k: int = 10,
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> list[Recommendations]:
        """The `k` items most like each of `item_ids`: one list per item, in the same order."""
        if isinstance(item_ids, str):
            raise TypeError("item_ids is a sequence of item ids, not one string")
        if not item_ids:
            return []
        _check_k(k)

        def fill_inputs(inputs: Any) -> None:
            string_vector(item_ids, into=inputs["item_ids"])
            int32_scalar(k, into=inputs["k"])

        return self._predict(
            fill_inputs,
            len(item_ids),
            signature=self.similar_signature,
            model=model,
            version=version,
            label=label,
            timeout=timeout,
        )

    # --- model management ----------------------------------------------------------------------

    def model_status(
        self, model: str | None = None, *, version: int | None = None, timeout: float | None = None
    ) -> tuple[ModelVersionStatus, ...]:
        """Every version the server knows of `model`, newest first, failed loads included.

        Raises ModelNotFound when the server knows no version of it.
        """
        request = protos.get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, model, version, None)
        response = self._call(
            "status",
            lambda: request,
            self.admin_timeout if timeout is None else timeout,
            guarded=False,
        )
        return tuple(
            ModelVersionStatus(
                version=status.version,
                state=_STATE_NAMES.Name(status.state),
                error_code=_status_code_name(status.status.error_code),
                error_message=status.status.error_message,
            )
            for status in response.model_version_status
        )

    def model_metadata(
        self,
        model: str | None = None,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> ModelMetadata:
        """The signatures (names, inputs and outputs with dtypes and shapes) of a model version."""
        request = protos.get_model_metadata_pb2.GetModelMetadataRequest()
        name = self._model_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(
            "metadata",
            lambda: request,
            self.admin_timeout if timeout is None else timeout,
            guarded=False,
        )
        signature_map = protos.get_model_metadata_pb2.SignatureDefMap()
        packed = response.metadata.get("signature_def")
        if packed is None or not packed.Unpack(signature_map):
            raise ModelResponseError("GetModelMetadata answered without a signature_def map")
        return ModelMetadata(
            model_name=response.model_spec.name or name,
            model_version=response.model_spec.version.value,
            signatures={
                key: SignatureInfo(
                    method_name=signature.method_name,
                    inputs=_tensor_infos(signature.inputs),
                    outputs=_tensor_infos(signature.outputs),
                )
                for key, signature in sorted(signature_map.signature_def.items())
            },
        )

    def reload_config(
        self,
        models: Iterable[ModelConfig] | Any,
        *,
        timeout: float | None = None,
    ) -> None:
        """Replace the server's whole model list (models left out are unloaded).

        Returns once newly added models are loaded. A label pointing at a version that is not
        AVAILABLE fails with FAILED_PRECONDITION (`ModelServerError`).
        """
        request = protos.model_management_pb2.ReloadConfigRequest()
        if isinstance(models, ModelServerConfig):
            request.config.CopyFrom(models)
        else:
            request.config.CopyFrom(model_server_config(models))
        response = self._call(
            "reload",
            lambda: request,
            self.admin_timeout if timeout is None else timeout,
            guarded=False,
        )
        if response.status.error_code:
            code = _STATUS_CODES.get(response.status.error_code, grpc.StatusCode.UNKNOWN)
            raise error_from_status(code, response.status.error_message)


_live_clients: weakref.WeakSet[PredictionClient] = weakref.WeakSet()


def _reset_clients_after_fork() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_clients_after_fork)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < 2**31:
        raise ValueError(f"k must be a positive int32, got {k!r}")


def _ranked_lists(response: Any, rows: int, requested_name: str) -> list[Recommendations]:
    outputs = response.outputs
    try:
        id_tensor, score_tensor = outputs["item_ids"], outputs["scores"]
    except KeyError:
        missing = [alias for alias in OUTPUTS if alias not in outputs]
        raise ModelResponseError(f"Predict answered without outputs {missing}") from None
    id_shape, item_ids = read_strings(id_tensor)
    score_shape, scores = read_floats(score_tensor)
    if id_shape != score_shape or len(id_shape) != 2 or id_shape[0] != rows:
        raise ModelResponseError(
            f"item_ids {list(id_shape)} and scores {list(score_shape)} must both be [{rows}, k]"
        )
    spec = response.model_spec
    name = spec.name or requested_name
    version = spec.version.value
    width = id_shape[1]
    lists = []
    for row in range(rows):
        start = row * width
        row_ids = item_ids[start : start + width]
        row_scores = scores[start : start + width]
        if "" in row_ids:  # padding: fewer candidates than k
            kept = [index for index, item_id in enumerate(row_ids) if item_id]
            row_ids = [row_ids[index] for index in kept]
            row_scores = [row_scores[index] for index in kept]
        lists.append(Recommendations(name, version, tuple(row_ids), tuple(row_scores)))
    return lists


def _tensor_infos(tensors: Any) -> dict[str, TensorInfo]:
    return {
        alias: TensorInfo(
            dtype=_DTYPE_NAMES.Name(info.dtype),
            shape=(
                None
                if info.tensor_shape.unknown_rank
                else tuple(dim.size for dim in info.tensor_shape.dim)
            ),
        )
        for alias, info in sorted(tensors.items())
    }


def _status_code_name(error_code: int) -> str:
    code = _STATUS_CODES.get(error_code)
    return code.name if code is not None else str(error_code)
