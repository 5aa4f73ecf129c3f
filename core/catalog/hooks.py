"""Plain-function hooks the catalog calls after a committed change. Other apps fill them in.

Called through `transaction.on_commit`, so they run only when the change is durable. They are
plain calls (no Django signals) so a reader can follow them; keep them cheap and never raise.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

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
