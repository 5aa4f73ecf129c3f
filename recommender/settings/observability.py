"""Metrics: who may read /metrics without an admin key."""

import ipaddress

from django.core.exceptions import ImproperlyConfigured

from .environment import env_list

_networks = env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"])
try:
    METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network(network) for network in _networks]
except ValueError as exc:
    raise ImproperlyConfigured(
        f"METRICS_ALLOWED_NETWORKS: expected comma-separated networks like 10.0.0.0/8 ({exc})"
    ) from exc
