"""Event and catalog ingestion: event types and weights, auto-insert, limits, retention.

See docs/ingestion.md. Every value comes from the environment; a bad value names its variable.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .environment import env_bool, env_int, env_list

# Built-in event types and the weight the feature jobs give each (a signal of interest).
_BUILTIN_EVENT_WEIGHTS = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "remove_from_cart": -2.0,
    "purchase": 8.0,
    "rating": 1.0,
}


def _parse_weights(name: str, entries: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for entry in entries:
        type_name, sep, raw_weight = entry.partition(":")
        type_name = type_name.strip()
        if (
            not type_name
            or len(type_name) > 32
            or not type_name.replace("_", "").isalnum()
            or not type_name.islower()
        ):
            raise ImproperlyConfigured(
                f"{name}: bad event type {type_name!r} (lower-case letters, digits, '_', "
                "at most 32 characters)"
            )
        try:
            weights[type_name] = float(raw_weight) if sep else 1.0
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name}: expected type:weight, got {entry!r} ({exc})"
            ) from exc
    return weights


# Extra event types beyond the built-in six, as `type:weight,type:weight` (e.g. `wishlist:3`).
EVENTS_EXTRA_TYPES = _parse_weights("EVENTS_EXTRA_TYPES", env_list("EVENTS_EXTRA_TYPES", []))
# Override weights of built-in types, same format (e.g. `purchase:10,view:0.5`).
_weight_overrides = _parse_weights("EVENTS_TYPE_WEIGHTS", env_list("EVENTS_TYPE_WEIGHTS", []))
_unknown_overrides = set(_weight_overrides) - set(_BUILTIN_EVENT_WEIGHTS)
if _unknown_overrides:
    raise ImproperlyConfigured(
        f"EVENTS_TYPE_WEIGHTS: unknown built-in type(s) {', '.join(sorted(_unknown_overrides))}; "
        "declare new types in EVENTS_EXTRA_TYPES"
    )
EVENT_TYPE_WEIGHTS: dict[str, float] = {
    **_BUILTIN_EVENT_WEIGHTS,
    **_weight_overrides,
    **EVENTS_EXTRA_TYPES,
}

# Unknown users / items named by an event are created on the fly (like Gorse's auto-insert);
# when off, such events are rejected with `unknown_user` / `unknown_item`.
CATALOG_AUTO_INSERT_USERS = env_bool("CATALOG_AUTO_INSERT_USERS", True)
CATALOG_AUTO_INSERT_ITEMS = env_bool("CATALOG_AUTO_INSERT_ITEMS", True)

# Largest batch of events (POST /events) and of catalog rows (POST /items|users/batch): 413 beyond.
EVENTS_MAX_BATCH = env_int("EVENTS_MAX_BATCH", 10_000, low=1, high=100_000)
CATALOG_MAX_BATCH = env_int("CATALOG_MAX_BATCH", 10_000, low=1, high=100_000)
# Largest serialized `context` of an event and `attributes` of an item or user, in bytes.
EVENTS_MAX_CONTEXT_BYTES = env_int("EVENTS_MAX_CONTEXT_BYTES", 4096, low=0)
CATALOG_MAX_ATTRIBUTES_BYTES = env_int("CATALOG_MAX_ATTRIBUTES_BYTES", 16_384, low=0)
# An event timestamp further than this in the future is rejected (clock skew allowance).
EVENTS_MAX_FUTURE_SECONDS = env_int("EVENTS_MAX_FUTURE_SECONDS", 24 * 3600, low=0)

# PostgreSQL: events are partitioned by month of `timestamp`. Partitions whose month ended more
# than this many days ago are dropped by the retention task; 0 keeps everything.
EVENTS_RETENTION_DAYS = env_int("EVENTS_RETENTION_DAYS", 0, low=0)
# Idempotency keys (event_id) are remembered this long: a retry later than this is stored again.
EVENTS_DEDUP_DAYS = env_int("EVENTS_DEDUP_DAYS", 30, low=1)
