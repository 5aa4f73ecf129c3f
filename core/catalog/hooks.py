"""Plain-function hooks the catalog calls after a committed change. Other apps fill them in.

Called through `transaction.on_commit`, so they run only when the change is durable. They are
plain calls (no Django signals) so a reader can follow them; keep them cheap and never raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

logger = logging.getLogger(__name__)

# Right to be forgotten: each eraser removes one kind of a shopper's data and returns how many
# rows/entries went. Apps register theirs in AppConfig.ready() (events does; features and cached
# recommendations register when they land). The DELETE /users/{id} answer reports each by name.
UserEraser = Callable[[int], int]
_user_erasers: dict[str, UserEraser] = {}


def user_eraser_register(name: str, eraser: UserEraser) -> None:
    _user_erasers[name] = eraser


def user_erasers() -> dict[str, UserEraser]:
    return dict(_user_erasers)


def items_removed(*, item_ids: Collection[int]) -> None:
    """Items were deleted from the catalog (or became unavailable). Hook for the recommendations
    app to drop them from caches at once; selectors already exclude them on every read."""
    from core.features.services import features_items_removed

    features_items_removed(item_ids=item_ids)


def items_restored(*, external_ids: Collection[str]) -> None:
    """Items were written available (created, restored or made available again): take them out
    of the feature store's hot set of unavailable items, which the serving path filters by.
    Re-checked against the database (a later change may have taken one out again)."""
    from core.features import hotstore

    from .models import Item

    try:
        store = hotstore.client("serve")
        if store is None or not external_ids:
            return
        back = list(
            Item.objects.filter(
                external_id__in=list(external_ids), deleted_at__isnull=True, available=True
            ).values_list("external_id", flat=True)
        )
        hotstore.unavailable_update(store, remove=back)
    except Exception:  # the catalog sync of the next sweep puts it right
        logger.warning("catalog: could not mark items available", exc_info=True)
