"""Small SavedModels in TF Serving's shapes, built with TensorFlow: for tests, benchmarks, demos.

- `export_half_plus_two`: `y = a*x + b` with several signatures (predict, two inputs / two
  outputs, classify and regress over `tf.Example`), like TF Serving's own test model.
- `export_retrieval_model`: a retrieval index with the item vocabulary inside: `user_history`
  (DT_STRING [-1, L]) -> `item_ids` (DT_STRING [-1, k]), `scores` (DT_FLOAT [-1, k]).
- `write_warmup_requests`: `assets.extra/tf_serving_warmup_requests`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from ml.serving.server.inference import CLASSIFY_METHOD, REGRESS_METHOD
from ml.serving.server.servable import WARMUP_FILE

_EXAMPLE_FEATURES = {"x": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])}


class _HalfPlusTwo(tf.Module):
    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = tf.Variable(a, dtype=tf.float32, name="a")
        self.b = tf.Variable(b, dtype=tf.float32, name="b")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.a * x + self.b}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.float32, name="x"),
            tf.TensorSpec([None], tf.float32, name="z"),
        ]
    )
    def two_inputs(self, x: tf.Tensor, z: tf.Tensor) -> dict[str, tf.Tensor]:
        y = self.a * x + self.b
        return {"y": y, "sum": y + z}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.io.parse_example(inputs, _EXAMPLE_FEATURES)["x"]
        return {"outputs": tf.reshape(self.a * x + self.b, [-1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.io.parse_example(inputs, _EXAMPLE_FEATURES)["x"]
        y = self.a * x + self.b
        batch = tf.shape(y)[0]
        classes = tf.tile(tf.constant([["y", "minus_y"]]), [batch, 1])
        return {"classes": classes, "scores": tf.concat([y, -y], axis=1)}


def _set_method_names(export_dir: str, methods: dict[str, str]) -> None:
    """TF2's exporter writes every signature as `predict`; classify/regress need their name."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    with open(path, "wb") as handle:
        handle.write(saved_model.SerializeToString())


def _export_atomically(
    module: tf.Module,
    export_dir: str,
    signatures: dict[str, object],
    methods: dict[str, str] | None = None,
) -> str:
    """Write next to `export_dir`, then rename: a version folder appears complete or not at all."""
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        if methods:
            _set_method_names(staging, methods)
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def export_half_plus_two(export_dir: str, *, a: float = 0.5, b: float = 2.0) -> str:
    """Signatures: `serving_default` (x -> y), `two_inputs` (x, z -> y, sum),
    `classify_x_to_y` (classify), `regress_x_to_y` (regress)."""
    module = _HalfPlusTwo(a, b)
    signatures = {
        "serving_default": module.predict,
        "two_inputs": module.two_inputs,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
    }
    methods = {"classify_x_to_y": CLASSIFY_METHOD, "regress_x_to_y": REGRESS_METHOD}
    return _export_atomically(module, export_dir, signatures, methods)


class _Retrieval(tf.Module):
    def __init__(self, item_ids: Sequence[str], embeddings: np.ndarray, k: int) -> None:
        super().__init__()
        self.k = k
        self.vocabulary = tf.constant(list(item_ids), dtype=tf.string)
        self.item_embeddings = tf.constant(embeddings, dtype=tf.float32)
        self.index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                self.vocabulary, tf.range(len(item_ids), dtype=tf.int64)
            ),
            default_value=-1,
        )

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="user_history")])
    def recommend(self, user_history: tf.Tensor) -> dict[str, tf.Tensor]:
        positions = self.index.lookup(user_history)
        known = tf.cast(positions >= 0, tf.float32)
        vectors = tf.gather(self.item_embeddings, tf.maximum(positions, 0)) * known[..., None]
        user = tf.reduce_sum(vectors, axis=1) / tf.maximum(
            tf.reduce_sum(known, axis=1, keepdims=True), 1.0
        )
        scores = tf.matmul(user, self.item_embeddings, transpose_b=True)
        top = tf.math.top_k(scores, k=self.k)
        return {"item_ids": tf.gather(self.vocabulary, top.indices), "scores": top.values}


def export_retrieval_model(
    export_dir: str, *, num_items: int = 1000, dim: int = 32, k: int = 10, seed: int = 0
) -> str:
    """Items `item-0` ... with random unit embeddings; the vocabulary ships in the model."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num_items, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    item_ids = [f"item-{index}" for index in range(num_items)]
    module = _Retrieval(item_ids, embeddings, k)
    return _export_atomically(module, export_dir, {"serving_default": module.recommend})


def write_warmup_requests(export_dir: str, requests: Iterable[predict_pb2.PredictRequest]) -> str:
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path
