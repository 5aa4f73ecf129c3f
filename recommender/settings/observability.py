"""Metrics: who may read /metrics without an admin key."""

import ipaddress

from django.core.exceptions import ImproperlyConfigured

from .environment import env_list


def _networks(name: str, default: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(network) for network in env_list(name, default)]
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"{name}: expected comma-separated networks like 10.0.0.0/8 ({exc})"
        ) from exc


METRICS_ALLOWED_NETWORKS = _networks("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"])
