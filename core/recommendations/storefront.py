"""`/demo/`: a small storefront page that shows the public API at work from a browser.

The page is a product grid with "recommended for you" and "similar items"; its JavaScript
(static/recommendations/storefront.js) calls the public API with the demo key and sends view and
click events, as a shop's own front end would. The server renders only the grid's products and
the key, and answers `/demo/items?ids=` so the script can show titles of recommended items.

Safety: the page hands its key to every visitor, so it is served only when `DEMO_PAGE_ENABLED`
(off in production by default), and only with a key whose scopes are exactly `events:write` and
`recommendations:read`: a broader key (catalog:write, admin) is refused, never shown.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.catalog.models import Item
from core.catalog.selectors import item_list
from core.system.scopes import EVENTS_WRITE, RECOMMENDATIONS_READ
from core.system.services import api_key_authenticate

DEMO_KEY_SCOPES = frozenset({EVENTS_WRITE, RECOMMENDATIONS_READ})
# Most ids one /demo/items call may ask about (a page of recommendations and similar items).
MAX_LOOKUP_IDS = 100


@dataclass(frozen=True)
class DemoKey:
    raw_key: str | None
    problem: str | None  # why the page cannot run, in words for the person who opened it


def demo_key_check() -> DemoKey:
    """The configured key, if it is valid and scoped exactly for the page."""
    raw_key = settings.DEMO_PAGE_API_KEY
    if not raw_key:
        return DemoKey(None, "DEMO_PAGE_API_KEY is not set.")
    api_key = api_key_authenticate(raw_key=raw_key)
    if api_key is None:
        return DemoKey(None, "DEMO_PAGE_API_KEY is not an active API key.")
    scopes = frozenset(api_key.scopes)
    if scopes != DEMO_KEY_SCOPES:
        return DemoKey(
            None,
            f"DEMO_PAGE_API_KEY has the scopes {', '.join(sorted(scopes))}; the page hands its "
            f"key to every visitor, so it takes only {' and '.join(sorted(DEMO_KEY_SCOPES))}.",
        )
    return DemoKey(raw_key, None)


def item_card(item: Item) -> dict[str, Any]:
    return {
        "id": item.external_id,
        "title": item.title or item.external_id,
        "category": item.category,
        "price": float(item.price) if item.price is not None else None,
    }


def _require_enabled() -> None:
    if not settings.DEMO_PAGE_ENABLED:
        raise Http404("The demo page is off (DEMO_PAGE_ENABLED).")


def _secure(response: HttpResponse) -> HttpResponse:
    # The page carries a key: keep it out of Referer headers and out of shared caches.
    response["Referrer-Policy"] = "no-referrer"
    response["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return response


@never_cache
@require_GET
def storefront_page(request: HttpRequest) -> HttpResponse:
    _require_enabled()
    key = demo_key_check()
    if key.problem:
        response = render(
            request,
            "recommendations/storefront_unconfigured.html",
            {"problem": key.problem},
            status=503,
        )
        return _secure(response)
    grid = item_list(available=True, limit=settings.DEMO_PAGE_GRID_SIZE).results
    config = {
        "apiKey": key.raw_key,
        "apiBase": "/api/v1",
        "itemsUrl": request.path.rstrip("/") + "/items",
        "products": [item_card(item) for item in grid],
        "count": 6,
    }
    return _secure(render(request, "recommendations/storefront.html", {"config": config}))


@never_cache
@require_GET
def storefront_items(request: HttpRequest) -> HttpResponse:
    """Titles and categories for item ids the API returned (the key must be the demo key)."""
    _require_enabled()
    key = demo_key_check()
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if key.raw_key is None or not hmac.compare_digest(sent.encode(), key.raw_key.encode()):
        return JsonResponse(
            {"detail": "Send the demo key: Authorization: Bearer <key>."}, status=401
        )
    ids = [part for part in request.GET.get("ids", "").split(",") if part][:MAX_LOOKUP_IDS]
    items = Item.objects.filter(external_id__in=ids, deleted_at__isnull=True)
    return JsonResponse({"items": [item_card(item) for item in items]})


urlpatterns = [
    path("", storefront_page, name="demo-storefront"),
    path("items", storefront_items, name="demo-storefront-items"),
]
