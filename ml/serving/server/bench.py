"""`make bench-model-server`: Predict overhead over in-process, and retrieval throughput.

    python -m ml.serving.server.bench [--items 10000] [--seconds 10]

Exports its own models (half-plus-two, and a retrieval model over `--items` items), starts the
server as a separate process (as production runs TF Serving), and prints:

- p50/p99 latency of the same signature called in-process (TF2's signature call, and the raw
  session callable the server runs) and through gRPC Predict; the target is at most 0.5 ms of
  overhead at p50 over the in-process signature call. The ways of calling are timed in
  alternating blocks of `--block` calls, so a change in the machine's load hits them alike;
- the floor of a gRPC call here: an empty handler on a bare grpcio server in its own process,
  and our server's GetModelStatus;
- Predict/s for the retrieval model with requests kept in flight (target: at least 500/s).

The client uses gRPC's classic poller (`GRPC_EXPERIMENTS=-event_engine_client`) unless
`GRPC_EXPERIMENTS` is set: the EventEngine client adds three thread wake-ups to every call
(docs/model-server.md). `GRPC_EXPERIMENTS= make bench-model-server` times grpc's default client.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Read by grpc once, when first imported (`ml.serving.server` does not import it eagerly). A
# value given by the caller applies to the client and both servers; otherwise each side gets
# its classic poller: the client here, the servers as `python -m ml.serving.server` sets it.
GIVEN_GRPC_EXPERIMENTS = os.environ.get("GRPC_EXPERIMENTS")
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ml.serving.server.example_models import (  # noqa: E402
    export_half_plus_two,
    export_retrieval_model,
)
from ml.serving.server.servable import LoadedServable, ServableId  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
OVERHEAD_TARGET_MS = 0.5
THROUGHPUT_TARGET = 500.0


def _server_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if GIVEN_GRPC_EXPERIMENTS is None:
        env["GRPC_EXPERIMENTS"] = "-event_engine_listener"  # what the server's CLI defaults to
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _time_interleaved(
    calls: dict[str, Callable[[], object]], n: int, block: int
) -> dict[str, list[float]]:
    """`n` timed calls (ms) of each, in alternating blocks of `block`, after 200 warm-up calls
    each: every way of calling sees the same machine."""
    for call in calls.values():
        for _ in range(min(200, n)):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    done = 0
    while done < n:
        size = min(block, n - done)
        for name, call in calls.items():
            timings = samples[name]
            for _ in range(size):
                started = time.perf_counter()
                call()
                timings.append((time.perf_counter() - started) * 1000)
        done += size
    return samples


def _bare_server(port: int) -> None:
    """An empty unary handler on a bare grpcio server: what any Python gRPC call costs here."""
    from concurrent import futures

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _summary(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} ({_percentile(samples, 0.99):.3f})"


def _tf2_signature(path: str, request: predict_pb2.PredictRequest):  # type: ignore[no-untyped-def]
    """The usual in-process call: load with TF2, call the signature with tensors from numpy."""
    loaded = tf.saved_model.load(path)
    function = loaded.signatures["serving_default"]
    values = {alias: tf.make_ndarray(tensor) for alias, tensor in request.inputs.items()}

    def call():  # type: ignore[no-untyped-def]
        assert loaded is not None  # keep the model's variables alive as long as the call
        return function(**{alias: tf.constant(value) for alias, value in values.items()})

    return call


def _session_feeds(servable: LoadedServable, request: predict_pb2.PredictRequest):  # type: ignore[no-untyped-def]
    view = servable.views["serving_default"]
    feeds = sorted(
        (view.inputs[alias].name, tf.make_ndarray(tensor))
        for alias, tensor in request.inputs.items()
    )
    return feeds, [view.outputs[alias].name for alias in view.output_aliases]


def _requests() -> dict[str, predict_pb2.PredictRequest]:
    hpt = predict_pb2.PredictRequest()
    hpt.model_spec.name = "hpt"
    hpt.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    retrieval = predict_pb2.PredictRequest()
    retrieval.model_spec.name = "retrieval"
    history = np.array([[f"item-{i}".encode() for i in range(0, 200, 20)]], dtype=object)
    retrieval.inputs["user_history"].CopyFrom(tf.make_tensor_proto(history))
    return {"hpt": hpt, "retrieval": retrieval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--block", type=int, default=100, help="calls per alternating block")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)  # internal: the floor
    args = parser.parse_args(argv)
    if args.bare_server:
        _bare_server(args.bare_server)
        return 0
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    one, five, fifteen = os.getloadavg()
    print(f"load average at start: {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores")
    experiments = os.environ.get("GRPC_EXPERIMENTS", "")
    server_experiments = _server_env()["GRPC_EXPERIMENTS"]
    print(f"GRPC_EXPERIMENTS: client {experiments!r}, servers {server_experiments!r}")

    workdir = Path(tempfile.mkdtemp(prefix="bench-model-server-"))
    export_half_plus_two(str(workdir / "hpt" / "1"))
    export_retrieval_model(str(workdir / "retrieval" / "1"), num_items=args.items, k=10)
    config = workdir / "models.config"
    entries = [
        f'config {{ name: "{name}" base_path: "{workdir / name}" model_platform: "tensorflow" }}'
        for name in ("hpt", "retrieval")
    ]
    config.write_text("model_config_list { " + " ".join(entries) + " }")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ml.serving.server", "--host=127.0.0.1", f"--port={port}",
         "--rest_api_port=0", f"--model_config_file={config}",
         "--file_system_poll_wait_seconds=0"],
        cwd=ROOT, env=_server_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bare_port = _free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "ml.serving.server.bench", f"--bare-server={bare_port}"],
        cwd=ROOT, env=_server_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    failed = False
    n = args.calls
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        requests = _requests()
        deadline = time.monotonic() + 120
        while True:  # the port opens once the models are loaded; be sure before timing
            try:
                stub.Predict(requests["retrieval"], timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

        print(
            f"Predict latency p50 (p99), ms, {n} calls of each, in alternating blocks of "
            f"{args.block}; retrieval over {args.items} items.\n"
            "  tf2-signature: in-process tf.saved_model.load(...).signatures[...](**tensors)\n"
            "  session: in-process Session callable, the executor the server itself uses\n"
            "  bare-grpc: an empty handler on a bare grpcio server (own process): the floor\n"
            "  status-rpc: our server's GetModelStatus round trip"
        )
        bare_channel = grpc.insecure_channel(f"127.0.0.1:{bare_port}")
        grpc.channel_ready_future(bare_channel).result(timeout=60)
        echo = bare_channel.unary_unary("/bench.Bare/Echo")
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "hpt"
        models_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        floors = _time_interleaved(
            {
                "bare-grpc": lambda: echo(b"ping", timeout=5),
                "status-rpc": lambda: models_stub.GetModelStatus(status_request, timeout=5),
            },
            n,
            args.block,
        )
        bare_channel.close()
        print("  ".join(f"{name} {_summary(samples)}" for name, samples in floors.items()))
        header = ("model", "tf2-signature", "session", "gRPC Predict", "overhead vs tf2",
                  "overhead vs session")  # fmt: skip
        print("  ".join(f"{h:>19}" if i else f"{h:<10}" for i, h in enumerate(header)))
        for name, request in requests.items():
            path = str(workdir / name / "1")
            signature = _tf2_signature(path, request)
            servable = LoadedServable.load(ServableId(name, 1), path)
            feeds, fetches = _session_feeds(servable, request)
            timed = _time_interleaved(
                {
                    "tf2": signature,
                    "session": lambda: servable.run(feeds, fetches),  # noqa: B023
                    "remote": lambda: stub.Predict(request, timeout=5),  # noqa: B023
                },
                n,
                args.block,
            )
            tf2, session, remote = timed["tf2"], timed["session"], timed["remote"]
            servable.close()
            over_tf2 = statistics.median(remote) - statistics.median(tf2)
            over_session = statistics.median(remote) - statistics.median(session)
            cells = (_summary(tf2), _summary(session), _summary(remote), f"{over_tf2:.3f}",
                     f"{over_session:.3f}")  # fmt: skip
            print(f"{name:<10}  " + "  ".join(f"{cell:>19}" for cell in cells))
            if over_tf2 > OVERHEAD_TARGET_MS:
                failed = True
                print(f"  {name}: over the {OVERHEAD_TARGET_MS} ms target")

        # Throughput: one client thread keeps `in_flight` calls going (gRPC futures).
        request = requests["retrieval"]
        done = 0
        errors = 0
        pending = [stub.Predict.future(request, timeout=10) for _ in range(args.in_flight)]
        started = time.perf_counter()
        end = started + args.seconds
        while pending:
            future = pending.pop(0)
            try:
                future.result()
                done += 1
            except grpc.RpcError:
                errors += 1
            if time.perf_counter() < end:
                pending.append(stub.Predict.future(request, timeout=10))
        elapsed = time.perf_counter() - started
        rate = done / elapsed
        print(f"retrieval throughput: {rate:.0f} Predict/s over {elapsed:.1f} s "
              f"({args.in_flight} in flight, {errors} errors, {args.items} items)")  # fmt: skip
        if rate < THROUGHPUT_TARGET or errors:
            failed = True
            print(f"  under the {THROUGHPUT_TARGET:.0f}/s target")
        channel.close()
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        for process in (server, bare):
            process.terminate()
            process.wait(timeout=30)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
