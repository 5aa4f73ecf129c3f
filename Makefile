# The documented entry points. `make demo` runs the backend; `make test` runs the checks.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/recommender
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DJANGO_ENV=test

.PHONY: help install test lint format typecheck demo model-server bench bench-model-server \
	bench-client bench-features bench-ingest bench-serve bench-model quality chaos soak clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)  ## Create .venv and install the pinned dependencies

lint: install  ## ruff lint + format check, mypy, and migrations in step with models
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy recommender core ml
	$(TEST_ENV) $(PY) manage.py makemigrations --check --dry-run

format: install  ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install  ## mypy with the django-stubs plugin
	$(VENV)/bin/mypy recommender core ml

test: install  ## Lint, migrations check, and the whole pytest suite on PostgreSQL + Redis
	$(PY) scripts/ensure_services.py "$(TEST_DATABASE_URL)" "$(TEST_REDIS_URL)"
	$(MAKE) --no-print-directory lint
	$(TEST_ENV) $(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install  ## Run the whole backend on this machine (embedded default); Ctrl-C stops it
	$(PY) scripts/demo.py

model-server: install  ## The local TF-Serving-compatible model server alone (settings' port and repository)
	$(PY) manage.py model_server

bench: bench-ingest bench-features bench-model bench-model-server bench-client bench-serve  ## Every benchmark, one after the other (figures in README)

bench-model-server: install  ## Local model server: Predict overhead over in-process, retrieval Predict/s
	$(PY) -m ml.serving.server.bench

bench-client: install  ## Serving client vs raw gRPC stub p50/p99, import time, RSS
	$(PY) -m ml.serving.bench_client

bench-model: install  ## Exported recommend signature, 100,000 items x 64 dims, beside the numpy floor
	$(PY) -m ml.bench_model $(BENCH_ARGS)

quality: install  ## Offline table on MovieLens (../shared): model vs popularity vs EASE
	$(PY) -m ml.train --events ../shared/data/ml-latest-small/ratings.csv --format movielens --evaluate-only

bench-serve: install  ## Recommendations at 150/s uncached and 600/s cached, beside a direct gRPC Predict
	$(PY) -m core.recommendations.bench_serve $(BENCH_ARGS)

# Benchmarks that need PostgreSQL and Redis use their own databases (re-created) and Redis dbs.
BENCH_REDIS := redis://127.0.0.1:6379

bench-ingest: install  ## Events over HTTP vs raw COPY, single-event latency, import_events (PostgreSQL)
	$(PY) scripts/ensure_services.py "$(TEST_DATABASE_URL)" "$(BENCH_REDIS)/10"
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(BENCH_REDIS)/10 $(PY) -m core.events.bench_ingest --events 1000000 $(BENCH_ARGS)

bench-features: install  ## Feature pipeline: batch events/s and freshness under ingest load
	$(PY) scripts/ensure_services.py "$(TEST_DATABASE_URL)" "$(BENCH_REDIS)/9"
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(BENCH_REDIS)/9 $(PY) -m core.features.bench $(BENCH_ARGS)

# Fault and soak runs start a private stack (their own PostgreSQL cluster, Redis servers, model
# server, gunicorn, worker, beat) and never touch the shared services: docs/hardening.md.
SOAK_SECONDS ?= 1800

chaos: install  ## Fault suite on a private real stack: per fault, requests, errors, events lost, recovery time
	$(PY) -m core.system.resilience.chaos $(CHAOS_ARGS)

soak: install  ## Steady load for SOAK_SECONDS (1800) on a private stack; fails on RSS growth
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m core.system.resilience.soak $(SOAK_ARGS)

clean:  ## Remove the virtualenv and local state (var/)
	rm -rf $(VENV) var
