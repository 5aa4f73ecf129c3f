"""Latency of the exported ``recommend`` signature versus the numpy floor (``make bench-model``).

Builds a random model (default 100,000 items x 64 dims) with the real export code, loads the
SavedModel the way the model server does (``ml.serving.server``: a TF1-style graph session with the
server's default thread settings, ``Session::Run`` on the calling thread) and times single
``Predict`` requests through the server's own handler (history of 20 known items, k=20): proto in,
graph run, proto out, no network.

The floor is what no serving stack can beat: one numpy matrix-vector product plus
``argpartition`` over the same 64-column item matrix, in its fastest layout (``[64, n_items]``,
single-threaded OpenBLAS, measured ~2.5x faster than the row-major ``[n_items, 64] @ q``, which
is timed after the run, for reference). Requests alternate with the floor, so both see the same
machine load.

    python -m ml.bench_model [--items 100000] [--dim 64] [--requests 500]
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # Multi-threaded OpenBLAS on a busy 2-core host is several times slower than one thread
    # (ml-latest-small training: 89 s vs 13 s). Only the CLI sets this; library callers
    # (Django, Celery) choose their own, see docs/models.md.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ml.model import TrainedModel


def random_model(n_items: int, dim: int, decays: tuple[float, ...], seed: int = 0) -> TrainedModel:
    """A model with the real shapes and random numbers (quality is irrelevant for latency).

    As a trained model: ``dim``-float input embeddings, ``len(decays) * dim + 1`` history
    features projected to ``dim`` query floats, and ``dim`` scoring columns per item.
    """
    rng = np.random.default_rng(seed)
    features = len(decays) * dim + 1
    return TrainedModel(
        item_ids=np.array([f"item-{n}" for n in range(n_items)], dtype=object),
        input_embeddings=rng.standard_normal((n_items, dim)).astype(np.float32),
        output_embeddings=rng.standard_normal((n_items, dim)).astype(np.float32),
        query_projection=rng.standard_normal((features, dim)).astype(np.float32),
        popularity=rng.random(n_items).astype(np.float32),
        decays=decays,
        norm_power=0.5,
        params={"random": True},
    )


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def percentiles(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.bench_model", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--decays", default="1.0,0.9,0.5", help="comma separated (as trained)")
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--intra-op",
        default="0,1",
        help="session intra-op threads, one phase each (0 = all cores, the server's default)",
    )
    args = parser.parse_args(argv)

    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow_serving.apis import predict_pb2

    from ml.export import export_model
    from ml.serving.server import inference
    from ml.serving.server.servable import LoadedServable, ServableId

    decays = tuple(float(d) for d in args.decays.split(","))
    intra_ops = [int(n) for n in args.intra_op.split(",")]
    model = random_model(args.items, args.dim, decays)
    rng = np.random.default_rng(1)
    histories = [
        rng.choice(args.items, args.history, replace=False)
        for _ in range(args.requests + args.warmup)
    ]
    with tempfile.TemporaryDirectory() as repository:
        started = time.perf_counter()
        version_dir = export_model(model, repository=repository, name="bench")
        export_seconds = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in Path(version_dir).rglob("*") if f.is_file()) / 1e6
        weights = np.ones((1, args.history), np.float32)
        requests = []
        for history in histories:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "bench"
            request.model_spec.signature_name = "recommend"
            ids = [[f"item-{n}".encode() for n in history]]
            request.inputs["history"].CopyFrom(tf.make_tensor_proto(ids, dtype=tf.string))
            request.inputs["history_weights"].CopyFrom(tf.make_tensor_proto(weights))
            request.inputs["k"].CopyFrom(tf.make_tensor_proto(args.k, dtype=tf.int32))
            requests.append(request)
        # The floor: the same 64-column item matrix, matvec + partial sort + sort of the k winners.
        rows = np.ascontiguousarray(model.output_embeddings)  # [n_items, dim]
        columns = np.ascontiguousarray(rows.T)  # [dim, n_items]: the fast layout for numpy
        queries = rng.standard_normal((len(histories), args.dim)).astype(np.float32)

        def top(scores: np.ndarray) -> np.ndarray:
            best = np.argpartition(-scores, args.k)[: args.k]
            return best[np.argsort(-scores[best])]

        def floor(query: np.ndarray) -> np.ndarray:
            return top(query @ columns)

        def floor_rows(query: np.ndarray) -> np.ndarray:
            return top(rows @ query)

        phases = []
        for intra_op in intra_ops:
            started = time.perf_counter()
            # As the model server loads it: intra-op threads as given (the server's default 0
            # means all cores), inter-op 0, Session::Run on the calling thread.
            servable = LoadedServable.load(
                ServableId("bench", 1),
                str(version_dir),
                session_config=config_pb2.ConfigProto(
                    intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=0
                ),
            )
            load_seconds = time.perf_counter() - started
            for request, query in zip(requests[: args.warmup], queries, strict=False):
                inference.predict(servable, request)
                floor(query)
            # Interleaved, so both see the same machine load (the host is shared).
            model_samples, floor_samples = [], []
            for request, query in zip(requests[args.warmup :], queries[args.warmup :], strict=True):
                started = time.perf_counter()
                inference.predict(servable, request)
                model_samples.append(time.perf_counter() - started)
                started = time.perf_counter()
                floor(query)
                floor_samples.append(time.perf_counter() - started)
            servable.close()
            phases.append((intra_op, load_seconds, model_samples, floor_samples, load_average()))
        # For reference, after the run (a third 25 MB matrix in the loop would evict the others
        # from the cache between requests): the row-major layout.
        rows_samples = []
        for query in queries[args.warmup :]:
            started = time.perf_counter()
            floor_rows(query)
            rows_samples.append(time.perf_counter() - started)

    print(
        f"model: {args.items} items x {args.dim} scoring columns ({len(decays)} decay blocks "
        f"folded into the query), history {args.history}, k={args.k}, {args.requests} requests"
    )
    print(f"export {export_seconds:.1f}s, {size_mb:.1f} MB on disk; {os.cpu_count()} cores")
    print(f"{'':<44}{'p50 ms':>9}{'p99 ms':>9}  load avg 1/5/15 min")
    for intra_op, load_seconds, model_samples, floor_samples, load in phases:
        tf_p50, tf_p99 = percentiles(model_samples)
        np_p50, np_p99 = percentiles(floor_samples)
        threads = f"{intra_op} thread" if intra_op else "all cores, server default"
        print(
            f"{f'model server Predict, intra-op {threads}':<44}{tf_p50:>9.3f}{tf_p99:>9.3f}  {load}"
        )
        print(f"{'  numpy floor q @ E[dim, n] + argpartition':<44}{np_p50:>9.3f}{np_p99:>9.3f}")
        print(
            f"  ratio p50 {tf_p50 / np_p50:.2f}x; goal p50 <= 3 ms: "
            f"{'met' if tf_p50 <= 3 else 'MISSED'} (session load {load_seconds:.1f}s)"
        )
    rows_p50, rows_p99 = percentiles(rows_samples)
    print(f"{'(after: numpy E[n, dim] @ q + argpartition)':<44}{rows_p50:>9.3f}{rows_p99:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
