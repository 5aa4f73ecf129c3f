"""API key lifecycle: create (the key is shown once), authenticate, revoke."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from .models import ApiKey
from .scopes import parse_scopes

KEY_PREFIX = "rk_"
# Keys are looked up on every request; a short in-process cache spares the database. A revoked
# key stops working in this process at once and in others within this many seconds. While the
# database is out of reach, keys this process has seen keep their last answer (nobody can revoke
# one then: revoking writes to the database), so the read path goes on serving.
_LOOKUP_TTL_SECONDS = 10.0
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def hash_key(raw_key: str) -> str:
    # Keys carry 190 bits of randomness, so a fast hash is safe (no dictionary to attack).
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, name: str, scopes: str | list[str]) -> CreatedApiKey:
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    parsed = parse_scopes(scopes)
    prefix = secrets.token_hex(4)
    raw_key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(24)}"
    api_key = ApiKey.objects.create(
        name=name, prefix=prefix, key_hash=hash_key(raw_key), scopes=parsed
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    _cache.clear()
    return api_key


class _LookupCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str, *, stale: bool = False) -> tuple[bool, ApiKey | None]:
        entry = self._entries.get(key_hash)
        if entry is None or (entry[0] < time.monotonic() and not stale):
            return False, None
        return True, entry[1]

    def put(self, key_hash: str, api_key: ApiKey | None) -> None:
        with self._lock:
            if len(self._entries) > 10_000:  # bound memory under a flood of bad keys
                self._entries.clear()
            self._entries[key_hash] = (time.monotonic() + _LOOKUP_TTL_SECONDS, api_key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_cache = _LookupCache()


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key for this secret, or None."""
    if not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 100:
        return None
    key_hash = hash_key(raw_key)
    found, api_key = _cache.get(key_hash)
    if not found:
        try:
            api_key = ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True).first()
        except DatabaseError:
            found, api_key = _cache.get(key_hash, stale=True)
            if not found:
                raise
        else:
            _cache.put(key_hash, api_key)
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
        api_key.last_used_at = now
        # A bookkeeping write: with the database out of reach, the next request after makes it.
        with contextlib.suppress(DatabaseError):
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key
