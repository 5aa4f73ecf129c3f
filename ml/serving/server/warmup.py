"""Warmup replay: `assets.extra/tf_serving_warmup_requests`, before a version becomes AVAILABLE."""

from __future__ import annotations

import logging
import os

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from ml.serving.server import errors, inference
from ml.serving.server.servable import LoadedServable

logger = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000


def read_warmup_records(path: str) -> list[prediction_log_pb2.PredictionLog]:
    records: list[prediction_log_pb2.PredictionLog] = []
    for raw in tf.compat.v1.io.tf_record_iterator(path):
        if len(records) >= MAX_WARMUP_RECORDS:
            raise errors.invalid_argument(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw)
        records.append(log)
    return records


def run_warmup(servable: LoadedServable, *, iterations: int = 1) -> int:
    """Replay the warmup file if the version has one; any failure fails the load."""
    path = servable.warmup_path()
    if not os.path.isfile(path):
        return 0
    records = read_warmup_records(path)
    for _ in range(max(iterations, 1)):
        for log in records:
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                inference.predict(servable, log.predict_log.request)
            elif kind == "classify_log":
                inference.classify(servable, log.classify_log.request)
            elif kind == "regress_log":
                inference.regress(servable, log.regress_log.request)
            elif kind == "multi_inference_log":
                inference.multi_inference(servable, log.multi_inference_log.request)
            else:
                raise errors.unknown(f"Unsupported log_type for warmup: {kind}")
    logger.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
        path,
        len(records),
    )
    return len(records)
