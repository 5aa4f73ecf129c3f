"""The feature pipeline: what Celery computes from events and where serving reads it.

See docs/features.md. Every value comes from the environment; a bad value names its variable.
"""

from __future__ import annotations

from .cache import REDIS_URL
from .environment import env_bool, env_float, env_int, env_list, env_url

# Where hot features live for serving. Default: REDIS_URL. Without Redis (the embedded default)
# serving reads the feature tables in the database directly.
FEATURES_REDIS_URL = env_url("FEATURES_REDIS_URL", REDIS_URL, ("redis", "rediss", "unix"))
# Most events one batch transaction reads past the watermark.
FEATURES_BATCH_SIZE = env_int("FEATURES_BATCH_SIZE", 50_000, low=100, high=1_000_000)
# A job run loops over batches until caught up or until this many seconds have passed.
FEATURES_RUN_BUDGET_SECONDS = env_float("FEATURES_RUN_BUDGET_SECONDS", 20.0, low=0.1)
# Length of a shopper's recent interaction sequence kept for serving.
FEATURES_HISTORY_LENGTH = env_int("FEATURES_HISTORY_LENGTH", 50, low=1, high=1000)
# PostgreSQL: a hole in the event ids (a transaction that took ids and has not committed yet)
# holds the watermark back until it fills or is this old (rolled back or deleted).
FEATURES_GAP_TIMEOUT_SECONDS = env_float("FEATURES_GAP_TIMEOUT_SECONDS", 30.0, low=0.0)
# Enqueue a refresh after every committed ingest (debounced); off leaves it to the sweep.
FEATURES_TRIGGER_ON_COMMIT = env_bool("FEATURES_TRIGGER_ON_COMMIT", True)
# Beat: how often the sweep runs (catch-up after a lost trigger, catalog availability sync).
FEATURES_SWEEP_SECONDS = env_float("FEATURES_SWEEP_SECONDS", 2.0, low=0.1)
# Beat: how often co-occurrence neighbours are brought up to date.
FEATURES_NEIGHBOURS_SECONDS = env_float("FEATURES_NEIGHBOURS_SECONDS", 10.0, low=0.1)
# Neighbours kept per item and kind, and how many of a shopper's previous items each new
# interaction is paired with.
FEATURES_NEIGHBOURS_K = env_int("FEATURES_NEIGHBOURS_K", 20, low=1, high=1000)
FEATURES_NEIGHBOURS_WINDOW = env_int("FEATURES_NEIGHBOURS_WINDOW", 5, low=1, high=100)
# Event types that make "viewed together" and "bought together" pairs.
FEATURES_VIEW_TYPES = env_list("FEATURES_VIEW_TYPES", ["view", "click", "add_to_cart"])
FEATURES_BUY_TYPES = env_list("FEATURES_BUY_TYPES", ["purchase"])
# Job runs older than this are deleted by the sweep.
FEATURES_RUN_RETENTION_DAYS = env_int("FEATURES_RUN_RETENTION_DAYS", 7, low=1)
