"""Benchmark of the serving client: what it costs a web worker, beside a raw gRPC stub.

    python -m ml.serving.bench_client [--items 10000] [--dim 64] [--requests 5000] [--json]
    python -m ml.serving.bench_client --target 127.0.0.1:8500   # an already running server

Without `--target` it exports a contract model (`ml.serving.contract_model`, 10,000 items, 64-d)
and starts the local model server (`python -m ml.serving.server`), both as subprocesses, so this
process never imports TensorFlow. It prints:

- the client's import time (a fresh interpreter, median of 5) and this process's RSS;
- p50/p99 of `PredictionClient.recommend` and of a raw `PredictionServiceStub.Predict` with the
  same request, interleaved in the same run, and the client's overhead;
- RSS after all the requests, and whether anything of TensorFlow got imported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT_RUNS = 5
_IMPORT_PROBE = (
    "import time; wall, cpu = time.perf_counter(), time.process_time(); "
    "import ml.serving.client; "
    "print(time.perf_counter() - wall, time.process_time() - cpu)"
)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def client_import_seconds() -> tuple[float, float]:
    """Median (wall, CPU) seconds of `import ml.serving.client` in fresh interpreters; CPU time
    is what the import costs, wall time also counts waiting for a busy machine."""
    walls, cpus = [], []
    for _ in range(IMPORT_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        wall, cpu = out.strip().splitlines()[-1].split()
        walls.append(float(wall))
        cpus.append(float(cpu))
    return statistics.median(walls), statistics.median(cpus)


def start_model_server(workdir: Path, items: int, dim: int) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    base = workdir / "recommender"
    subprocess.run(
        [sys.executable, "-m", "ml.serving.contract_model", str(base / "1"),
         f"--num-items={items}", f"--dim={dim}"],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    log = workdir / "server.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ml.serving.server", "--port=0", "--rest_api_port=0",
             "--host=127.0.0.1", "--model_name=recommender", f"--model_base_path={base}"],
            cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    pattern = re.compile(r"Running gRPC ModelServer at [\d.]+:(\d+)")
    while True:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return process, f"127.0.0.1:{found.group(1)}"
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"model server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(target: str, items: int, requests: int, history_length: int, k: int) -> dict:
    rss_before_import = rss_mb()
    started = time.perf_counter()
    import grpc

    from ml.serving.client import PredictionClient, protos

    in_process_import = time.perf_counter() - started
    rss_after_import = rss_mb()

    grpc_stubs = protos.load_proto_module("tensorflow_serving.apis.prediction_service_pb2_grpc")
    channel = grpc.insecure_channel(target)
    raw = grpc_stubs.PredictionServiceStub(channel)
    client = PredictionClient(target, timeout=5.0)

    def raw_predict(history: list[str]) -> None:
        """What a hand-written caller does: typed fields in, the response proto out."""
        request = protos.predict_pb2.PredictRequest()
        request.model_spec.name = "recommender"
        request.model_spec.signature_name = "recommend"
        tensor = request.inputs["history"]
        tensor.dtype = protos.types_pb2.DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.tensor_shape.dim.add(size=len(history))
        tensor.string_val.extend(item.encode() for item in history)
        weights = request.inputs["history_weights"]
        weights.dtype = protos.types_pb2.DT_FLOAT
        weights.tensor_shape.dim.add(size=1)
        weights.tensor_shape.dim.add(size=len(history))
        weights.float_val.extend([1.0] * len(history))
        count = request.inputs["k"]
        count.dtype = protos.types_pb2.DT_INT32
        count.tensor_shape.SetInParent()
        count.int_val.append(k)
        raw.Predict(request, timeout=5.0)

    rng = random.Random(0)
    histories = [
        [f"item-{rng.randrange(items)}" for _ in range(history_length)] for _ in range(requests)
    ]
    for history in histories[:200]:  # connect, warm both paths
        client.recommend(history, k=k)
        raw_predict(history)
    rss_after_warmup = rss_mb()  # the histories above are the benchmark's own memory

    client_times: list[float] = []
    raw_times: list[float] = []
    clock = time.perf_counter
    for index, history in enumerate(histories):
        # alternate which goes first, so neither always meets a warmer server
        order = (0, 1) if index % 2 else (1, 0)
        for which in order:
            started = clock()
            if which == 0:
                client.recommend(history, k=k)
                client_times.append(clock() - started)
            else:
                raw_predict(history)
                raw_times.append(clock() - started)

    tensorflow_modules = sorted(
        name for name in sys.modules if name == "tensorflow" or name.startswith("tensorflow.")
    )
    client_p50, raw_p50 = percentile(client_times, 0.5), percentile(raw_times, 0.5)
    import_wall, import_cpu = client_import_seconds()
    return {
        "target": target,
        "requests": requests,
        "history_length": history_length,
        "k": k,
        "client_import_s_fresh_interpreter": import_wall,
        "client_import_cpu_s_fresh_interpreter": import_cpu,
        "client_import_s_this_process": in_process_import,
        "rss_mb_before_import": rss_before_import,
        "rss_mb_after_import": rss_after_import,
        "rss_mb_after_warmup": rss_after_warmup,
        "rss_mb_after_requests": rss_mb(),
        "client_p50_ms": client_p50 * 1e3,
        "client_p99_ms": percentile(client_times, 0.99) * 1e3,
        "raw_stub_p50_ms": raw_p50 * 1e3,
        "raw_stub_p99_ms": percentile(raw_times, 0.99) * 1e3,
        "client_overhead_p50_us": (client_p50 - raw_p50) * 1e6,
        "ratio_p50": client_p50 / raw_p50,
        "tensorflow_modules_loaded": len(tensorflow_modules),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serving client benchmark")
    parser.add_argument("--target", help="host:port of a running server with `recommender`")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    server = None
    with tempfile.TemporaryDirectory(prefix="bench-client-") as workdir:
        target = args.target
        if target is None:
            server, target = start_model_server(Path(workdir), args.items, args.dim)
        try:
            report = run(target, args.items, args.requests, args.history_length, args.k)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"serving client benchmark: {report['requests']} requests to {report['target']}, "
          f"{args.items} items x {args.dim}-d, history {args.history_length}, "
          f"k={args.k}")  # fmt: skip
    import_ms = report["client_import_s_fresh_interpreter"] * 1e3
    import_cpu_ms = report["client_import_cpu_s_fresh_interpreter"] * 1e3
    print(f"  import ml.serving.client    {import_ms:7.1f} ms wall, {import_cpu_ms:.1f} ms CPU"
          f"  (fresh interpreter, median of {IMPORT_RUNS})")  # fmt: skip
    print(f"  RSS after import            {report['rss_mb_after_import']:7.1f} MB")
    print(f"  RSS after warm-up           {report['rss_mb_after_warmup']:7.1f} MB"
          f"  (includes the benchmark's {report['requests']} histories)")  # fmt: skip
    print(f"  RSS after the requests      {report['rss_mb_after_requests']:7.1f} MB")
    print(f"  TensorFlow modules loaded   {report['tensorflow_modules_loaded']:7d}")
    print(f"  {'':26}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"  {'PredictionClient.recommend':26}{report['client_p50_ms']:9.3f}"
          f"{report['client_p99_ms']:9.3f}")  # fmt: skip
    print(f"  {'raw stub Predict':26}{report['raw_stub_p50_ms']:9.3f}"
          f"{report['raw_stub_p99_ms']:9.3f}")  # fmt: skip
    print(f"  client overhead at p50: {report['client_overhead_p50_us']:.0f} us "
          f"(ratio {report['ratio_p50']:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
