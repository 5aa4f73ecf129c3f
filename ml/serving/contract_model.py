"""A small SavedModel with the recommendation model's serving contract, for the client's tests and
benchmark (the trained model comes from `ml/export.py`; this one needs no data).

Contract (what `ml.serving.client` sends and reads):
- `recommend` (also `serving_default`): `history` DT_STRING [-1, -1] padded with "",
  `history_weights` DT_FLOAT [-1, -1], `k` DT_INT32 scalar -> `item_ids` DT_STRING [-1, -1],
  `scores` DT_FLOAT [-1, -1]. Items already in the history are not recommended.
- `similar`: `item_ids` DT_STRING [-1], `k` DT_INT32 scalar -> the same outputs, one row per item,
  the item itself excluded.
The item vocabulary lives in the model. Imports TensorFlow: never import this from a web process.

    python -m ml.serving.contract_model /tmp/models/recommender/1 --num-items 10000 --dim 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_NEG = -1e9


class _ContractModel(tf.Module):
    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray) -> None:
        super().__init__()
        self.num_items = len(item_ids)
        self.vocabulary = tf.constant(list(item_ids), dtype=tf.string)
        self.embeddings = tf.constant(embeddings, dtype=tf.float32)
        self.index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                self.vocabulary, tf.range(self.num_items, dtype=tf.int64)
            ),
            default_value=-1,
        )

    def _top(self, scores: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        top = tf.math.top_k(scores, k=tf.minimum(k, self.num_items))
        # Fewer real candidates than k (everything else excluded): pad with "" like a real index.
        real = top.values > _NEG / 2
        item_ids = tf.where(real, tf.gather(self.vocabulary, top.indices), "")
        return {"item_ids": item_ids, "scores": tf.where(real, top.values, 0.0)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.string, name="history"),
            tf.TensorSpec([None, None], tf.float32, name="history_weights"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def recommend(
        self, history: tf.Tensor, history_weights: tf.Tensor, k: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        positions = self.index.lookup(history)
        weights = history_weights * tf.cast(positions >= 0, tf.float32)
        vectors = tf.gather(self.embeddings, tf.maximum(positions, 0)) * weights[..., None]
        user = tf.reduce_sum(vectors, axis=1) / tf.maximum(
            tf.reduce_sum(tf.abs(weights), axis=1, keepdims=True), 1e-6
        )
        scores = tf.matmul(user, self.embeddings, transpose_b=True)
        # [batch, num_items] 1.0 at the history's items, built in O(batch * length)
        rows = tf.broadcast_to(tf.range(tf.shape(positions)[0])[:, None], tf.shape(positions))
        indices = tf.stack([rows, tf.cast(tf.maximum(positions, 0), tf.int32)], axis=-1)
        seen = tf.tensor_scatter_nd_max(
            tf.zeros([tf.shape(positions)[0], self.num_items]),
            indices,
            tf.cast(positions >= 0, tf.float32),
        )
        return self._top(scores + seen * _NEG, k)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="item_ids"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def similar(self, item_ids: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        positions = self.index.lookup(item_ids)
        known = tf.cast(positions >= 0, tf.float32)[:, None]
        vectors = tf.gather(self.embeddings, tf.maximum(positions, 0)) * known
        scores = tf.matmul(vectors, self.embeddings, transpose_b=True)
        itself = tf.one_hot(positions, self.num_items, dtype=tf.float32)
        return self._top(scores + itself * _NEG, k)


def contract_embeddings(num_items: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Item ids `item-0` ... and unit embeddings from `seed`."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num_items, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return [f"item-{index}" for index in range(num_items)], embeddings


def export_contract_model(
    export_dir: str,
    *,
    num_items: int = 100,
    dim: int = 8,
    seed: int = 0,
    item_ids: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
) -> str:
    """Write the SavedModel to `export_dir` (a version folder), atomically: built beside it, then
    renamed, so a polling server never sees half a version."""
    if item_ids is None or embeddings is None:
        item_ids, embeddings = contract_embeddings(num_items, dim, seed)
    module = _ContractModel(item_ids, embeddings)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tf.saved_model.save(
            module,
            staging,
            signatures={
                "serving_default": module.recommend,
                "recommend": module.recommend,
                "similar": module.similar,
            },
        )
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="the version folder to create, e.g. .../recommender/1")
    parser.add_argument("--num-items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    export_contract_model(args.export_dir, num_items=args.num_items, dim=args.dim, seed=args.seed)


if __name__ == "__main__":
    main()
