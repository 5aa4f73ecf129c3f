"""Latency of the exported ``recommend`` signature versus the numpy floor (``make bench-model``).

Builds a random model (default 100,000 items x 64 dims) with the real export code, loads the
SavedModel in this process, and times single requests (history of 20 known items, k=20). The
floor is what no serving stack can beat: one numpy matrix-vector product plus ``argpartition``
over the same item matrix. Both run in the same process, one after the other.

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

    The output embedding has ``len(decays) * dim + 1`` columns (+1 popularity at export); with
    one decay block, scoring is a 100,000 x (dim + 2) product.
    """
    rng = np.random.default_rng(seed)
    features = len(decays) * dim + 1
    return TrainedModel(
        item_ids=np.array([f"item-{n}" for n in range(n_items)], dtype=object),
        input_embeddings=rng.standard_normal((n_items, dim)).astype(np.float32),
        output_embeddings=rng.standard_normal((n_items, features)).astype(np.float32),
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
    parser.add_argument("--decays", default="1.0", help="comma separated; one block by default")
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from ml.export import export_model

    decays = tuple(float(d) for d in args.decays.split(","))
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
        started = time.perf_counter()
        recommend = tf.saved_model.load(str(version_dir)).signatures["recommend"]
        load_seconds = time.perf_counter() - started
        k = tf.constant(args.k, tf.int32)
        weights = tf.constant(np.ones((1, args.history), np.float32))
        requests = [
            tf.constant([[f"item-{n}" for n in history]], tf.string) for history in histories
        ]
        # The floor: the same item matrix, one matvec + partial sort + sort of the k winners.
        matrix = np.ascontiguousarray(
            np.concatenate([model.output_embeddings, model.popularity[:, None]], axis=1)
        )
        queries = rng.standard_normal((len(histories), matrix.shape[1])).astype(np.float32)

        def floor(query: np.ndarray) -> np.ndarray:
            scores = matrix @ query
            top = np.argpartition(-scores, args.k)[: args.k]
            return top[np.argsort(-scores[top])]

        for request, query in zip(requests[: args.warmup], queries, strict=False):
            recommend(history=request, history_weights=weights, k=k)
            floor(query)
        # Interleaved, so both see the same machine load (the host is shared).
        tf_samples, floor_samples = [], []
        for request, query in zip(requests[args.warmup :], queries[args.warmup :], strict=True):
            started = time.perf_counter()
            outputs = recommend(history=request, history_weights=weights, k=k)
            outputs["item_ids"].numpy()
            tf_samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            floor(query)
            floor_samples.append(time.perf_counter() - started)

    tf_p50, tf_p99 = percentiles(tf_samples)
    np_p50, np_p99 = percentiles(floor_samples)
    columns = model.output_embeddings.shape[1] + 1
    print(
        f"model: {args.items} items x {args.dim} dims ({columns} output columns), "
        f"history {args.history}, k={args.k}, {args.requests} requests"
    )
    print(f"load average (1/5/15 min) at the end: {load_average()} on {os.cpu_count()} cores")
    print(f"export {export_seconds:.1f}s, {size_mb:.1f} MB on disk, load {load_seconds:.1f}s")
    print(f"{'':<28}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'SavedModel recommend':<28}{tf_p50:>9.3f}{tf_p99:>9.3f}")
    print(f"{'numpy matvec+argpartition':<28}{np_p50:>9.3f}{np_p99:>9.3f}")
    print(
        f"ratio p50 {tf_p50 / np_p50:.2f}x; goal p50 <= 3 ms: {'met' if tf_p50 <= 3 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
