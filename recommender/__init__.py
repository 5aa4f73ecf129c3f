import os

# Multi-threaded OpenBLAS on a small shared host made training ~7x slower (docs/models.md); one
# BLAS thread per process is the default here, before anything imports numpy. Set the variable
# to change it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# gRPC's default I/O engine hands each call between threads three times on the client side; its
# classic poller does not (a model-server round trip ~0.1 ms cheaper, docs/model-server.md).
# grpc reads this once, when first imported: here, before anything imports it. Set it to change.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_client")

from recommender.celery import app as celery_app

__all__ = ("celery_app",)
