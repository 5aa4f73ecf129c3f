"""The storefront demo page at /demo/ (core/recommendations/storefront.py).

The page hands an API key to every browser that opens it, so it is off in production unless an
operator turns it on, and the key it hands out may carry only `events:write` and
`recommendations:read` (the page refuses a broader one).
"""

from .base import DJANGO_ENV
from .environment import env_bool, env_int, env_optional_str

# Serve /demo/ at all. Default: on in development and test, off in production.
DEMO_PAGE_ENABLED = env_bool("DEMO_PAGE_ENABLED", DJANGO_ENV != "production")
# The key the page's JavaScript sends (`make demo` creates one and passes it). Unset: the page
# shows how to create one instead of a storefront.
DEMO_PAGE_API_KEY = env_optional_str("DEMO_PAGE_API_KEY")
# Products in the page's grid (the newest available items of the catalog).
DEMO_PAGE_GRID_SIZE = env_int("DEMO_PAGE_GRID_SIZE", 24, low=1, high=200)
