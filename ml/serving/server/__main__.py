"""`python -m ml.serving.server`: the local model server, with `tensorflow_model_server`'s flags.

    python -m ml.serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=recommender --model_base_path=/models/recommender
"""

from __future__ import annotations

import os

# gRPC's EventEngine listener reads and writes the sockets on its own threads and hands every
# event to the server's completion-queue thread: three more thread wake-ups per call, which on
# this 2-core VM cost more than the whole RPC floor when the machine is idle (a sleeping vCPU is
# slow to wake). The classic poller does the I/O on the thread that waits for it. grpc reads
# this variable once, when first imported, so it is set before any import that pulls grpc in;
# a value already in the environment wins. docs/model-server.md has the measurements.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from ml.serving.server.app import ModelServer, ServerOptions
from ml.serving.server.errors import ServingError


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "t"):
        return True
    if lowered in ("0", "false", "no", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


IGNORED_FLAGS = (
    "--enable_batching",
    "--batching_parameters_file",
    "--rest_api_num_threads",
    "--rest_api_timeout_in_ms",
    "--monitoring_config_file",
    "--grpc_channel_arguments",
    "--saved_model_tags",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml.serving.server",
        description="Local TensorFlow-Serving-compatible model server (gRPC + REST).",
    )
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port (default 8500)")
    add("--rest_api_port", type=int, default=8501, help="REST port; 0 turns REST off")
    # TF Serving listens on every interface; --host narrows it (not a TF Serving flag).
    add("--host", default="0.0.0.0", help="address to bind")  # noqa: S104
    add("--model_name", default="default", help="name of the model (without a config file)")
    add("--model_base_path", default="", help="folder holding numeric version folders")
    add("--model_config_file", default="", help="text ModelServerConfig; overrides the above")
    add(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read the config file this often; 0 reads it once",
    )
    add(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="scan base paths for new versions this often; 0 scans once",
    )
    add(
        "--allow_version_labels_for_unavailable_models",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="allow new labels to point at versions not yet AVAILABLE",
    )
    add("--max_num_load_retries", type=int, default=5)
    add("--load_retry_interval_micros", type=int, default=60_000_000)
    add("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True)
    add("--num_request_iterations_for_warmup", type=int, default=1)
    add("--grpc_max_threads", type=int, default=16)
    add("--tensorflow_intra_op_parallelism", type=int, default=0)
    add("--tensorflow_inter_op_parallelism", type=int, default=0)
    # Accepted so that a production command line runs here unchanged; they change nothing.
    for flag in IGNORED_FLAGS:
        add(flag, nargs="?", const="true", default=None, help=argparse.SUPPRESS)
    return parser


def options_from_args(argv: Sequence[str] | None = None) -> ServerOptions:
    args = build_parser().parse_args(argv)
    for flag in IGNORED_FLAGS:
        if getattr(args, flag.removeprefix("--")) is not None:
            logging.getLogger("ml.serving.server").warning(
                "%s is accepted for compatibility and ignored by the local server%s",
                flag,
                " (metrics are always at /monitoring/prometheus/metrics)"
                if flag == "--monitoring_config_file"
                else "",
            )
    return ServerOptions(
        port=args.port,
        rest_api_port=args.rest_api_port or None,
        host=args.host,
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        allow_version_labels_for_unavailable_models=(
            args.allow_version_labels_for_unavailable_models
        ),
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        enable_model_warmup=args.enable_model_warmup,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        grpc_max_threads=args.grpc_max_threads,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
    )


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=os.environ.get("MODEL_SERVER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # TensorFlow's loader logs deprecation notices and every variable restore: keep errors only.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    options = options_from_args(argv)
    server = ModelServer(options)
    try:
        server.start()
    except (ServingError, ValueError, OSError) as error:
        message = error.message if isinstance(error, ServingError) else str(error)
        logging.getLogger("ml.serving.server").error("%s", message)
        return 1

    def _shutdown(signum: int, _frame: object) -> None:
        logging.getLogger("ml.serving.server").info("Signal %d: shutting down", signum)
        server.stop()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
