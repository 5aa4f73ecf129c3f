"""Catalog reads: one item or user, cursor-paginated lists, and what recommendations must skip."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.db.models import Q, QuerySet

from .models import Item, User

T = TypeVar("T", Item, User)


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class Page(Generic[T]):
    results: list[T]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "id":
            raise ValueError(prefix)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this API returned") from exc


def _page(queryset: QuerySet[T], *, cursor: str | None, limit: int) -> Page[T]:
    if cursor:
        queryset = queryset.filter(id__gt=decode_cursor(cursor))
    rows = list(queryset.order_by("id")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(results=rows, next_cursor=encode_cursor(rows[-1].pk) if more and rows else None)


def item_get(*, external_id: str) -> Item | None:
    return Item.objects.filter(external_id=external_id, deleted_at__isnull=True).first()


def item_list(
    *,
    category: str | None = None,
    available: bool | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> Page[Item]:
    """Items in id order. `category` matches that node and its subtree ('shoes' matches
    'shoes/running')."""
    queryset = Item.objects.filter(deleted_at__isnull=True)
    if category:
        category = category.strip("/")
        queryset = queryset.filter(Q(category=category) | Q(category__startswith=category + "/"))
    if available is not None:
        queryset = queryset.filter(available=available)
    return _page(queryset, cursor=cursor, limit=limit)


def item_recommendable_queryset() -> QuerySet[Item]:
    """What a recommendation may show: in the catalog and available. Read it (or filter by
    `item_excluded_ids`) on every request so a delete takes effect at once."""
    return Item.objects.filter(deleted_at__isnull=True, available=True)


def item_excluded_ids() -> set[int]:
    """Our ids of items a recommendation must never show (deleted or unavailable)."""
    return set(
        Item.objects.filter(Q(deleted_at__isnull=False) | Q(available=False)).values_list(
            "id", flat=True
        )
    )


def user_get(*, external_id: str) -> User | None:
    return User.objects.filter(external_id=external_id).first()


def user_list(*, cursor: str | None = None, limit: int = 100) -> Page[User]:
    return _page(User.objects.all(), cursor=cursor, limit=limit)
