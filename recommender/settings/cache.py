from .base import VAR_DIR
from .environment import env_url

REDIS_URL = env_url("REDIS_URL", None, ("redis", "rediss", "unix"))

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "core.system.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "rec",
            "TIMEOUT": 300,
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
else:
    # Embedded default: a file cache shared by the web, worker and beat processes.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "TIMEOUT": 300,
        }
    }
