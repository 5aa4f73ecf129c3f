"""Security: per-key rate limits by scope, and the storefront origins allowed by CORS.

The security headers (HSTS, secure cookies, nosniff, X-Frame-Options) live in base.py with the
rest of Django's own settings, under `if PRODUCTION:`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from .environment import env_list, env_str

# Requests per key and scope. A view's `required_scope` picks its line; `*` covers the scopes not
# listed (such as `/me`, which any key may call). Generous: they stop a runaway client, not load.
_DEFAULT_RATE_LIMITS = {
    "events:write": "1000/s",
    "recommendations:read": "1000/s",
    "catalog:write": "200/s",
    "models:write": "20/s",
    "admin": "100/s",
    "*": "200/s",
}
_RATE = re.compile(r"^(\d+)/(s|sec|second|m|min|minute|h|hour|d|day)$")
_PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int] | None:
    """'100/s' -> (100, 1); 'off' -> None (no limit). Raises ValueError otherwise."""
    rate = rate.strip().lower()
    if rate in ("off", "none"):
        return None
    match = _RATE.match(rate)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"bad rate {rate!r}: expected N/s, N/m, N/h, N/d or off")
    return int(match.group(1)), _PERIOD_SECONDS[match.group(2)[0]]


def _parse_rate_limits(raw: str) -> dict[str, str]:
    limits = dict(_DEFAULT_RATE_LIMITS)
    for part in raw.split(","):
        if not part.strip():
            continue
        scope, sep, rate = part.partition("=")
        if not sep or not scope.strip():
            raise ValueError(f"bad entry {part.strip()!r}: expected scope=rate")
        parse_rate(rate)
        limits[scope.strip()] = rate.strip().lower()
    return limits


def rate_limits_setting(raw: str, *, name: str = "API_RATE_LIMITS") -> dict[str, str]:
    try:
        return _parse_rate_limits(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"{name}: expected a comma-separated list like 'events:write=100/s,models:write=2/s', "
            f"got {raw!r} ({exc})"
        ) from exc


# Entries given here replace the defaults for their scope; the others keep their default.
API_RATE_LIMITS = rate_limits_setting(env_str("API_RATE_LIMITS", ""))


def _parse_origin(origin: str) -> str:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{origin!r} is not an origin like https://shop.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{origin!r}: an origin has no path, query or user")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _origins_setting(origins: list[str]) -> list[str]:
    try:
        return [_parse_origin(origin) for origin in origins]
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"CORS_ALLOWED_ORIGINS: expected comma-separated origins like "
            f"https://shop.example.com ({exc})"
        ) from exc


# Browser origins of the storefronts that call the API directly. Empty: no CORS headers at all.
CORS_ALLOWED_ORIGINS = _origins_setting(env_list("CORS_ALLOWED_ORIGINS", []))
