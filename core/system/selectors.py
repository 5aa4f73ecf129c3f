from __future__ import annotations

import time

from django.core.cache import cache

HEARTBEAT_CACHE_KEY = "system:worker-heartbeat"


def heartbeat_age_seconds() -> float | None:
    try:
        beat = cache.get(HEARTBEAT_CACHE_KEY)
    except Exception:  # cache down: readiness reports it under "cache"
        return None
    return None if beat is None else round(time.time() - float(beat), 1)
