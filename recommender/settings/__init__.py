"""Settings: base plus one module per integration. See README, "Configuration"."""

from .base import *  # noqa: F403
from .cache import *  # noqa: F403
from .celery import *  # noqa: F403
from .database import *  # noqa: F403
from .demo import *  # noqa: F403
from .features import *  # noqa: F403
from .ingestion import *  # noqa: F403
from .logging import *  # noqa: F403
from .model_server import *  # noqa: F403
from .observability import *  # noqa: F403
from .recommendations import *  # noqa: F403
from .registry import *  # noqa: F403
from .security import *  # noqa: F403
