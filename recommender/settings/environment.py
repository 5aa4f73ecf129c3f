"""Typed reads of environment variables.

Every setting comes from the environment. A bad value stops start-up with a message naming the
variable, so an operator sees `DJANGO_DEBUG: expected a boolean, got 'maybe'` rather than a
traceback from deep inside Django.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import environ
from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")
N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _read(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError, KeyError, ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(f"{name}: expected {expected}, got {raw!r} ({exc})") from exc


def env_str(name: str, default: str) -> str:
    return _read(name, default, str, "a string")


def env_optional_str(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not one of true/false/1/0/yes/no/on/off")


def env_bool(name: str, default: bool) -> bool:
    return _read(name, default, _parse_bool, "a boolean")


def _bounded(convert: Callable[[str], N], low: N | None, high: N | None) -> Callable[[str], N]:
    def parse(raw: str) -> N:
        value = convert(raw)
        if low is not None and value < low:
            raise ValueError(f"must be >= {low}")
        if high is not None and value > high:
            raise ValueError(f"must be <= {high}")
        return value

    return parse


def env_int(name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
    return _read(name, default, _bounded(int, low, high), "an integer")


def env_float(
    name: str, default: float, *, low: float | None = None, high: float | None = None
) -> float:
    return _read(name, default, _bounded(float, low, high), "a number")


def env_list(name: str, default: list[str]) -> list[str]:
    return _read(
        name,
        default,
        lambda raw: [part.strip() for part in raw.split(",") if part.strip()],
        "a comma-separated list",
    )


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        return raw

    return _read(name, default, parse, "one of " + "/".join(choices))


_DATABASE_SCHEMES = ("postgres", "postgresql", "pgsql", "sqlite")


def _parse_database_url(raw: str) -> dict:
    if "://" not in raw:
        raise ValueError("not a URL like postgres://user@host:5432/name or sqlite:///path")
    scheme = raw.split("://", 1)[0]
    if scheme not in _DATABASE_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(_DATABASE_SCHEMES)}")
    config = environ.Env.db_url_config(raw)
    return config


def env_database(name: str, default: str) -> dict:
    return _read(name, _parse_database_url(default), _parse_database_url, "a database URL")


def _parse_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme = raw.split("://", 1)[0] if "://" in raw else ""
        if scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}")
        return raw

    return parse


def env_url(name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
    return _read(name, default, _parse_url(schemes), "a URL")


def _parse_target(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected host:port")
    return raw


def env_target(name: str, default: str) -> str:
    return _read(name, default, _parse_target, "a gRPC target host:port")
