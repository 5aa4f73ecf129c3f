import os

# Multi-threaded OpenBLAS on a small shared host made training ~7x slower (docs/models.md); one
# BLAS thread per process is the default here, before anything imports numpy. Set the variable
# to change it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from recommender.celery import app as celery_app

__all__ = ("celery_app",)
