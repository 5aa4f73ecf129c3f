"""The model registry: pushes, validation, deployment, experiments and guardrails.

See docs/registry.md. Every value comes from the environment; a bad value names its variable.
"""

from __future__ import annotations

import os

from .base import VAR_DIR
from .environment import env_float, env_int, env_str
from .model_server import MODEL_REPOSITORY

# Largest archive a push may upload, and the most its members may unpack to (zip bombs).
REGISTRY_MAX_ARCHIVE_BYTES = env_int("REGISTRY_MAX_ARCHIVE_BYTES", 512 * 1024**2, low=1024)
REGISTRY_MAX_UNPACKED_BYTES = env_int("REGISTRY_MAX_UNPACKED_BYTES", 2 * 1024**3, low=1024)
REGISTRY_MAX_ARCHIVE_MEMBERS = env_int("REGISTRY_MAX_ARCHIVE_MEMBERS", 10_000, low=10)
# Where uploaded archives wait for validation (a worker reads them: share it with the workers).
REGISTRY_UPLOAD_DIR = env_str("REGISTRY_UPLOAD_DIR", str(VAR_DIR / "registry-uploads"))
# The text ModelServerConfig the registry writes on every deployment. Start TF Serving with
# --model_config_file pointing at it, so a restarted server serves what the registry deployed.
REGISTRY_MODEL_CONFIG_FILE = env_str(
    "REGISTRY_MODEL_CONFIG_FILE", os.path.join(MODEL_REPOSITORY, "models.config")
)
# The model repository as the model server sees it (its base paths), when it mounts it elsewhere
# than MODEL_REPOSITORY; empty: the same path.
REGISTRY_SERVER_REPOSITORY = env_str("REGISTRY_SERVER_REPOSITORY", "")
# How long a deployment waits for new versions to become AVAILABLE on the model server.
REGISTRY_DEPLOY_TIMEOUT_SECONDS = env_float(
    "REGISTRY_DEPLOY_TIMEOUT_SECONDS", 300.0, low=1.0, high=3600.0
)
# Default share of shoppers (percent) a canary serves when the deployment names none.
REGISTRY_CANARY_PERCENT = env_float("REGISTRY_CANARY_PERCENT", 10.0, low=0.1, high=100.0)
# The serving path re-reads the active experiment at most this often (seconds).
REGISTRY_ASSIGNMENT_TTL_SECONDS = env_float(
    "REGISTRY_ASSIGNMENT_TTL_SECONDS", 2.0, low=0.0, high=60.0
)
# Offline gate on push: recent events (days, users at most) replayed leave-last-out through the
# challenger and the stable version; a challenger whose HR@10 is lower than the stable one's by
# more than REGISTRY_EVAL_MAX_DROP (relative, 0.05 = 5 %) is refused unless the push is forced.
REGISTRY_EVAL_DAYS = env_int("REGISTRY_EVAL_DAYS", 14, low=1)
REGISTRY_EVAL_MAX_USERS = env_int("REGISTRY_EVAL_MAX_USERS", 2000, low=1)
REGISTRY_EVAL_MIN_USERS = env_int("REGISTRY_EVAL_MIN_USERS", 20, low=1)
REGISTRY_EVAL_MAX_DROP = env_float("REGISTRY_EVAL_MAX_DROP", 0.05, low=0.0, high=1.0)
# Guardrails, checked every REGISTRY_GUARDRAIL_CHECK_SECONDS over the last
# REGISTRY_GUARDRAIL_WINDOW_SECONDS: the canary is rolled back automatically when its model
# error rate exceeds MAX_ERROR_RATE, its mean latency exceeds MAX_LATENCY_RATIO times the
# stable arm's, or its CTR is below the stable arm's by more than MAX_CTR_DROP (relative, only
# once both arms have MIN_IMPRESSIONS), continuously for BREACH_SECONDS.
REGISTRY_GUARDRAIL_CHECK_SECONDS = env_float("REGISTRY_GUARDRAIL_CHECK_SECONDS", 60.0, low=1.0)
REGISTRY_GUARDRAIL_WINDOW_SECONDS = env_int("REGISTRY_GUARDRAIL_WINDOW_SECONDS", 900, low=60)
REGISTRY_GUARDRAIL_MAX_ERROR_RATE = env_float(
    "REGISTRY_GUARDRAIL_MAX_ERROR_RATE", 0.05, low=0.0, high=1.0
)
REGISTRY_GUARDRAIL_MAX_LATENCY_RATIO = env_float(
    "REGISTRY_GUARDRAIL_MAX_LATENCY_RATIO", 2.0, low=1.0
)
REGISTRY_GUARDRAIL_MAX_CTR_DROP = env_float(
    "REGISTRY_GUARDRAIL_MAX_CTR_DROP", 0.3, low=0.0, high=1.0
)
REGISTRY_GUARDRAIL_MIN_IMPRESSIONS = env_int("REGISTRY_GUARDRAIL_MIN_IMPRESSIONS", 500, low=1)
REGISTRY_GUARDRAIL_BREACH_SECONDS = env_int("REGISTRY_GUARDRAIL_BREACH_SECONDS", 300, low=0)
