"""The model repository: versions on disk, version policies, loads and unloads, labels.

Follows TF Serving's `AspiredVersionsManager` with the `AvailabilityPreservingPolicy`: a new
version loads while the old one serves, and the old one is unloaded only once a wanted version is
AVAILABLE. A version that fails to load ends in END with its error (visible in GetModelStatus)
and is retried a bounded number of times; what is loaded keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from ml.serving.server import errors
from ml.serving.server.errors import ServingError
from ml.serving.server.repository import aspired_versions, scan_versions, validate_config
from ml.serving.server.servable import LoadedServable, ServableHandle, ServableId
from ml.serving.server.warmup import run_warmup

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
START = State.Value("START")
LOADING = State.Value("LOADING")
AVAILABLE = State.Value("AVAILABLE")
UNLOADING = State.Value("UNLOADING")
END = State.Value("END")


@dataclass(frozen=True)
class ManagerOptions:
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    session_config: config_pb2.ConfigProto | None = None


@dataclass
class VersionRecord:
    version: int
    path: str
    state: int = START
    error: ServingError | None = None
    servable: LoadedServable | None = None
    failed_attempts: int = 0
    retry_at: float = 0.0


@dataclass
class ModelRecord:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    on_disk: dict[int, str] = field(default_factory=dict)
    removed: bool = False
    scan_problem: str | None = None


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: int
    error_code: int
    error_message: str


class ManagerListener:
    """Hooks for metrics; the default does nothing."""

    def load_finished(self, name: str, version: int, ok: bool, seconds: float) -> None:
        pass

    def versions_changed(self, name: str, available: list[int]) -> None:
        pass


def _load_error(error: BaseException) -> ServingError:
    if isinstance(error, ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        code = next((c for c in grpc.StatusCode if c.value[0] == error.error_code), None)
        return ServingError(code or grpc.StatusCode.UNKNOWN, error.message)
    if isinstance(error, FileNotFoundError):
        return errors.not_found(str(error))
    return errors.unknown(f"{type(error).__name__}: {error}")


class ModelManager:
    """Owns every model version; `resolve` hands a loaded version to a request."""

    def __init__(
        self, options: ManagerOptions | None = None, listener: ManagerListener | None = None
    ) -> None:
        self.options = options or ManagerOptions()
        self.listener = listener or ManagerListener()
        self._lock = threading.Lock()  # models, versions' states, routing, labels
        self._reconcile_lock = threading.RLock()  # one load/unload sequence at a time
        self._models: dict[str, ModelRecord] = {}
        self._routing: dict[str, dict[int, LoadedServable]] = {}
        self._latest: dict[str, LoadedServable] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._config = model_server_config_pb2.ModelServerConfig()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- configuration -----------------------------------------------------------------------

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        with self._lock:
            copy = model_server_config_pb2.ModelServerConfig()
            copy.CopyFrom(self._config)
            return copy

    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Replace the model list (omitted models are unloaded); returns once new models are
        AVAILABLE, raising if some did not become available or a label is invalid."""
        validate_config(config)
        owned = model_server_config_pb2.ModelServerConfig()
        owned.CopyFrom(config)
        config = owned
        with self._reconcile_lock:
            added: list[str] = []
            with self._lock:
                wanted = {model.name: model for model in config.model_config_list.config}
                for name, existing in self._models.items():
                    if name not in wanted:
                        existing.removed = True
                for name, model_config in wanted.items():
                    record = self._models.get(name)
                    if (
                        record is None
                        or record.removed
                        or (record.config.base_path != model_config.base_path)
                    ):
                        if record is not None:
                            # A new base path is a new model: drop what the old path served.
                            record.removed = True
                        added.append(name)
                    else:
                        record.config = model_config
                self._config = config
            for name in added:
                old = self._models.get(name)
                if old is not None:
                    self._reconcile_model(name, old, scan=False)
                with self._lock:
                    self._models[name] = ModelRecord(config=wanted[name])
            self._reconcile_all(scan=True)
            failed = []
            for name in added:
                record = self._models[name]
                for version in sorted(aspired_versions(record.config, record.on_disk)):
                    version_record = record.versions.get(version)
                    if version_record is None or version_record.state != AVAILABLE:
                        failed.append(str(ServableId(name, version)))
            label_error: ServingError | None = None
            try:
                self._update_labels(config)
            except ServingError as error:
                logger.error("Version labels not applied: %s", error.message)
                label_error = error
            # TF Serving reports the models first; both failures are in the log.
            if failed:
                message = (
                    f"{len(failed)} model(s) did not become available: {{{', '.join(failed)}}}"
                )
                logger.error(message)
                raise errors.unknown(message)
            if label_error is not None:
                raise label_error

    def _update_labels(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        with self._lock:
            new_labels: dict[str, dict[str, int]] = {}
            for model in config.model_config_list.config:
                record = self._models.get(model.name)
                current = self._labels.get(model.name, {})
                for label, version in sorted(model.version_labels.items()):
                    version_record = record.versions.get(version) if record else None
                    available = version_record is not None and version_record.state == AVAILABLE
                    allowed_unavailable = (
                        self.options.allow_version_labels_for_unavailable_models
                        and current.get(label) in (None, version)
                    )
                    if not available and not allowed_unavailable:
                        raise errors.failed_precondition(
                            f"Request to assign label to version {version} of model "
                            f"{model.name}, which is not currently available for inference"
                        )
                    new_labels.setdefault(model.name, {})[label] = version
            self._labels = new_labels

    # -- the control loop --------------------------------------------------------------------

    def start_polling(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll_loop, name="model-repository-poll", daemon=True
            )
            self._poller.start()

    def stop(self, *, unload: bool = True) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        if unload:
            with self._reconcile_lock:
                with self._lock:
                    for record in self._models.values():
                        record.removed = True
                self._reconcile_all(scan=False)

    def _poll_loop(self) -> None:
        poll = self.options.file_system_poll_wait_seconds
        tick = poll if poll > 0 else self.options.load_retry_interval_seconds
        tick = max(min(tick, self.options.load_retry_interval_seconds), 0.05)
        next_scan = time.monotonic() + poll
        while not self._stop.wait(tick):
            scan = poll > 0 and time.monotonic() >= next_scan
            if scan:
                next_scan = time.monotonic() + poll
            try:
                with self._reconcile_lock:
                    self._reconcile_all(scan=scan)
            except Exception:  # the poller must survive anything a repository throws at it
                logger.exception("Model repository poll failed")

    def poll_now(self) -> None:
        """Scan every base path and act now (tests, or a server with polling disabled)."""
        with self._reconcile_lock:
            self._reconcile_all(scan=True)

    def _reconcile_all(self, *, scan: bool) -> None:
        with self._lock:
            models = list(self._models.items())
        for name, record in models:
            self._reconcile_model(name, record, scan=scan)

    def _reconcile_model(self, name: str, record: ModelRecord, *, scan: bool) -> None:
        if scan and not record.removed:
            problem = None
            try:
                on_disk = scan_versions(record.config.base_path)
            except OSError as error:
                on_disk = {}
                problem = f"File system storage path {record.config.base_path} cannot be read: "
                problem += str(error)
            if not on_disk and problem is None:
                problem = f"No versions found under base path {record.config.base_path}"
            if problem != record.scan_problem:  # log a problem once, not at every poll
                if problem is not None:
                    logger.warning("Model %s: %s", name, problem)
                record.scan_problem = problem
            with self._lock:
                for version, version_record in record.versions.items():
                    if version not in on_disk and version_record.error is not None:
                        # Gone from disk: if it comes back (complete this time), load it afresh.
                        version_record.failed_attempts = 0
                        version_record.retry_at = 0.0
                record.on_disk = on_disk
        aspired = set() if record.removed else aspired_versions(record.config, record.on_disk)
        while True:
            action = self._next_action(record, aspired)
            if action is None:
                return
            verb, version = action
            if verb == "unload":
                self._unload(name, record, version)
            else:
                self._load(name, record, version)

    def _next_action(self, record: ModelRecord, aspired: set[int]) -> tuple[str, int] | None:
        with self._lock:
            versions = record.versions
            unaspired_available = [
                v for v, r in versions.items() if r.state == AVAILABLE and v not in aspired
            ]
            aspired_available = any(
                versions[v].state == AVAILABLE for v in aspired if v in versions
            )
            if unaspired_available and (
                not aspired or aspired_available or len(unaspired_available) > 1
            ):
                return "unload", min(unaspired_available)
            now = time.monotonic()
            new = [
                v
                for v in aspired
                if v not in versions
                or (versions[v].state == END and versions[v].error is None)
                or (
                    versions[v].state == END
                    and versions[v].failed_attempts <= self.options.max_num_load_retries
                    and now >= versions[v].retry_at
                )
            ]
            if new:
                return "load", max(new)
            return None

    def _load(self, name: str, record: ModelRecord, version: int) -> None:
        path = record.on_disk[version]
        with self._lock:
            version_record = record.versions.get(version)
            if version_record is None:
                version_record = VersionRecord(version=version, path=path)
                record.versions[version] = version_record
            version_record.path = path
            version_record.state = LOADING
        servable_id = ServableId(name, version)
        logger.info("Loading servable version %s from %s", servable_id, path)
        started = time.monotonic()
        servable: LoadedServable | None = None
        try:
            servable = LoadedServable.load(
                servable_id, path, session_config=self.options.session_config
            )
            if self.options.enable_model_warmup:
                run_warmup(servable, iterations=self.options.num_request_iterations_for_warmup)
        except Exception as exception:  # a bad version must never take the server down
            error = _load_error(exception)
            if servable is not None:
                servable.close(drain_timeout=0)
            with self._lock:
                version_record.state = END
                version_record.error = error
                version_record.failed_attempts += 1
                version_record.retry_at = (
                    time.monotonic() + self.options.load_retry_interval_seconds
                )
                attempts = version_record.failed_attempts
            retry = attempts <= self.options.max_num_load_retries
            logger.error(
                "Loading servable %s failed (attempt %d%s): %s",
                servable_id,
                attempts,
                ", will retry" if retry else ", giving up",
                error.message,
            )
            self.listener.load_finished(name, version, False, time.monotonic() - started)
            return
        with self._lock:
            version_record.state = AVAILABLE
            version_record.error = None
            version_record.failed_attempts = 0
            version_record.servable = servable
            self._publish(name, record)
        logger.info("Successfully loaded servable version %s", servable_id)
        self.listener.load_finished(name, version, True, time.monotonic() - started)

    def _unload(self, name: str, record: ModelRecord, version: int) -> None:
        with self._lock:
            version_record = record.versions[version]
            version_record.state = UNLOADING
            servable = version_record.servable
            version_record.servable = None
            self._publish(name, record)
        logger.info("Unloading servable version %s", ServableId(name, version))
        if servable is not None:
            servable.close()
        with self._lock:
            version_record.state = END
            version_record.error = None

    def _publish(self, name: str, record: ModelRecord) -> None:
        """Rebuild the routing table of one model (called with the lock held)."""
        available = {
            v: r.servable
            for v, r in record.versions.items()
            if r.state == AVAILABLE and r.servable is not None and not record.removed
        }
        if available:
            self._routing[name] = available
            self._latest[name] = available[max(available)]
        else:
            self._routing.pop(name, None)
            self._latest.pop(name, None)
        self.listener.versions_changed(name, sorted(available))

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> ServableHandle:
        """The servable for a request's ModelSpec, held until the handle is closed."""
        name = spec.name
        if not name:
            raise errors.invalid_argument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            if choice is None:
                servable = self._latest.get(name)
                if servable is None:
                    raise errors.not_found(f"Servable not found for request: Latest({name})")
            else:
                if choice == "version_label":
                    label = spec.version_label
                    version = self._labels.get(name, {}).get(label)
                    if version is None:
                        raise errors.invalid_argument(
                            f"Unrecognized servable version label: {label}"
                        )
                else:
                    version = spec.version.value
                found = self._routing.get(name, {}).get(version)
                if found is None:
                    raise errors.not_found(
                        f"Servable not found for request: Specific({name}, {version})"
                    )
                servable = found
            servable.acquire()
        return ServableHandle(servable)

    def version_statuses(self, spec: model_pb2.ModelSpec) -> list[VersionStatus]:
        """GetModelStatus: all known versions of a model, newest first."""
        name = spec.name
        choice = spec.WhichOneof("version_choice")
        with self._lock:
            record = self._models.get(name)
            versions = dict(record.versions) if record else {}
            if choice is not None:
                if choice == "version_label":
                    requested = self._labels.get(name, {}).get(spec.version_label)
                    if requested is None:
                        raise errors.invalid_argument(
                            f"Unrecognized servable version label: {spec.version_label}"
                        )
                else:
                    requested = spec.version.value
                if requested not in versions:
                    raise errors.not_found(f"Could not find version {requested} of model {name}")
                versions = {requested: versions[requested]}
            elif not versions:
                raise errors.not_found(f"Could not find any versions of model {name}")
            return [
                VersionStatus(
                    version=v,
                    state=r.state,
                    error_code=r.error.error_code if r.error else 0,
                    error_message=r.error.message if r.error else "",
                )
                for v, r in sorted(versions.items(), reverse=True)
            ]

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self._labels.get(name, {}))

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(name for name, record in self._models.items() if not record.removed)
