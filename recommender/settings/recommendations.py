"""The serving path: list sizes, filters, diversity, latency budget, caching."""

from .base import DJANGO_ENV
from .environment import env_float, env_int, env_list

# Time a recommendation request may spend before it answers from the next fallback tier.
RECOMMENDATIONS_BUDGET_MS = env_int("RECOMMENDATIONS_BUDGET_MS", 50, low=5, high=10_000)
# Largest `count` a request may ask for, and the default.
RECOMMENDATIONS_MAX_COUNT = env_int("RECOMMENDATIONS_MAX_COUNT", 100, low=1, high=1000)
RECOMMENDATIONS_DEFAULT_COUNT = env_int("RECOMMENDATIONS_DEFAULT_COUNT", 10, low=1, high=1000)
# Length of a stored list: pages are served from it without repeats for the list's lifetime.
RECOMMENDATIONS_LIST_LENGTH = env_int("RECOMMENDATIONS_LIST_LENGTH", 200, low=10, high=5000)
RECOMMENDATIONS_LIST_TTL_SECONDS = env_int("RECOMMENDATIONS_LIST_TTL_SECONDS", 1800, low=60)
# Model answers are cached per (model, history) for this long.
RECOMMENDATIONS_CACHE_TTL_SECONDS = env_int("RECOMMENDATIONS_CACHE_TTL_SECONDS", 300, low=0)
# Event types whose items are not recommended again to the same shopper.
RECOMMENDATIONS_EXCLUDE_EVENT_TYPES = env_list("RECOMMENDATIONS_EXCLUDE_EVENT_TYPES", ["purchase"])
# At most this many items of one top-level category before others (0 = off).
RECOMMENDATIONS_MAX_PER_CATEGORY = env_int("RECOMMENDATIONS_MAX_PER_CATEGORY", 3, low=0)
# History items sent to the model (most recent).
RECOMMENDATIONS_HISTORY_LENGTH = env_int("RECOMMENDATIONS_HISTORY_LENGTH", 50, low=1, high=1000)
# Longest `exclude`, session-history or candidate list a request may carry.
RECOMMENDATIONS_MAX_ID_LIST = env_int("RECOMMENDATIONS_MAX_ID_LIST", 500, low=1, high=10_000)
# Circuit breaker: consecutive model-server failures that open it, and seconds it stays open.
MODEL_SERVER_BREAKER_FAILURES = env_int("MODEL_SERVER_BREAKER_FAILURES", 5, low=1)
MODEL_SERVER_BREAKER_SECONDS = env_float("MODEL_SERVER_BREAKER_SECONDS", 5.0, low=0.1)
# Impressions are written by a per-process writer this often (0: in the request; the test
# suite's default), buffering at most RECOMMENDATIONS_IMPRESSION_BUFFER rows while the database
# is away.
RECOMMENDATIONS_IMPRESSION_FLUSH_MS = env_int(
    "RECOMMENDATIONS_IMPRESSION_FLUSH_MS", 0 if DJANGO_ENV == "test" else 200, low=0, high=60_000
)
RECOMMENDATIONS_IMPRESSION_BUFFER = env_int(
    "RECOMMENDATIONS_IMPRESSION_BUFFER", 100_000, low=100, high=10_000_000
)
