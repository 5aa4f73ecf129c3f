"""Fault and soak runs on a private, real stack (`make chaos`, `make soak`; docs/hardening.md).

`stack` starts every process of the backend on this machine with state of its own (a PostgreSQL
cluster, Redis servers, the local model server, the web server, a Celery worker and beat), `load`
drives steady traffic at it, `chaos` breaks one part at a time and `soak` watches memory.
Nothing here touches a shared PostgreSQL or Redis: each run makes its own and removes it.
"""
