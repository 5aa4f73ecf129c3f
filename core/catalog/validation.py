"""Bulk validation of catalog rows (items, users): plain Python, no serializer per row, so a batch
of 10,000 is checked in milliseconds. Errors carry the row's index in the request."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from django.conf import settings

MAX_ID_LENGTH = 255
MAX_TITLE_LENGTH = 500
MAX_CATEGORY_LENGTH = 500
MAX_TAGS = 100
MAX_TAG_LENGTH = 100
MAX_PRICE = Decimal("9999999999.99")


@dataclass(frozen=True, slots=True)
class RowError:
    index: int
    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "field": self.field,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class ItemIn:
    external_id: str
    title: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()
    price: Decimal | None = None
    available: bool = True
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UserIn:
    external_id: str
    attributes: dict[str, Any] | None = None


ITEM_FIELDS = frozenset({"id", "title", "category", "tags", "price", "available", "attributes"})
USER_FIELDS = frozenset({"id", "attributes"})


def external_id_error(value: Any) -> str | None:
    """Why `value` is not a valid external id, or None. Ids are strings (integers are accepted
    and turned into strings): 1 to 255 characters."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "must be a string"
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        return f"must be 1 to {MAX_ID_LENGTH} characters"
    return None


def _attributes(raw: Any, index: int, errors: list[RowError]) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(RowError(index, "attributes", "invalid", "must be an object"))
        return None
    limit = settings.CATALOG_MAX_ATTRIBUTES_BYTES
    try:
        size = len(orjson.dumps(raw))
    except TypeError as exc:
        errors.append(RowError(index, "attributes", "invalid", f"not serializable: {exc}"))
        return None
    if size > limit:
        errors.append(
            RowError(index, "attributes", "too_large", f"is {size} bytes; the limit is {limit}")
        )
        return None
    return raw


def _unknown_fields(row: dict, allowed: frozenset[str], index: int, errors: list[RowError]) -> None:
    unknown = row.keys() - allowed
    if unknown:
        errors.append(
            RowError(
                index,
                sorted(unknown)[0],
                "unknown_field",
                f"unknown field(s): {', '.join(sorted(unknown))}; "
                f"expected: {', '.join(sorted(allowed))}",
            )
        )


def parse_category(raw: Any) -> str | None:
    """'a/b/c' or ["a", "b", "c"] -> 'a/b/c'; None when malformed."""
    if raw is None:
        return ""
    if isinstance(raw, str):
        parts = raw.split("/")
    elif isinstance(raw, list) and all(isinstance(part, str) for part in raw):
        parts = raw
    else:
        return None
    path = "/".join(part.strip() for part in parts if part.strip())
    return path if len(path) <= MAX_CATEGORY_LENGTH else None


def _row_id(
    row: dict, allowed: frozenset[str], index: int, external_id: Any
) -> tuple[Any, list[RowError]]:
    """The row's id (from the URL for PUT, else the body) and the errors of fields and id."""
    errors: list[RowError] = []
    _unknown_fields(row, allowed, index, errors)
    raw_id = external_id if external_id is not None else row.get("id")
    if external_id is not None and "id" in row and str(row["id"]) != str(external_id):
        errors.append(RowError(index, "id", "mismatch", "differs from the id in the URL"))
    if raw_id is None:
        errors.append(RowError(index, "id", "required", "is required"))
    elif (problem := external_id_error(raw_id)) is not None:
        errors.append(RowError(index, "id", "invalid", problem))
    return raw_id, errors


def item_parse(row: Any, *, index: int, external_id: Any = None) -> tuple[ItemIn | None, list]:
    """One item from a JSON object. `external_id` comes from the URL for PUT /items/{id}."""
    if not isinstance(row, dict):
        return None, [RowError(index, None, "invalid", "must be an object")]
    raw_id, errors = _row_id(row, ITEM_FIELDS, index, external_id)
    title = row.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str) or len(title) > MAX_TITLE_LENGTH:
        errors.append(
            RowError(index, "title", "invalid", f"must be a string of <= {MAX_TITLE_LENGTH}")
        )
    category = parse_category(row.get("category"))
    if category is None:
        errors.append(
            RowError(
                index,
                "category",
                "invalid",
                f"must be a path 'a/b/c' or a list of strings, <= {MAX_CATEGORY_LENGTH} characters",
            )
        )
    tags = row.get("tags") or []
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(tag, str) and 0 < len(tag) <= MAX_TAG_LENGTH for tag in tags)
    ):
        errors.append(
            RowError(
                index,
                "tags",
                "invalid",
                f"must be a list of at most {MAX_TAGS} non-empty strings "
                f"of <= {MAX_TAG_LENGTH} characters",
            )
        )
        tags = []
    price = _price(row.get("price"), index, errors)
    available = row.get("available", True)
    if not isinstance(available, bool):
        errors.append(RowError(index, "available", "invalid", "must be true or false"))
    attributes = _attributes(row.get("attributes"), index, errors)
    if errors:
        return None, errors
    return (
        ItemIn(
            external_id=str(raw_id),
            title=title,
            category=category or "",
            tags=tuple(dict.fromkeys(tags)),
            price=price,
            available=available,
            attributes=attributes,
        ),
        [],
    )


def _price(raw: Any, index: int, errors: list[RowError]) -> Decimal | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        errors.append(RowError(index, "price", "invalid", "must be a number"))
        return None
    if isinstance(raw, float) and not math.isfinite(raw):
        errors.append(RowError(index, "price", "invalid", "must be finite"))
        return None
    try:
        price = Decimal(str(raw)).quantize(Decimal("0.01"))
    except InvalidOperation:
        errors.append(RowError(index, "price", "invalid", "must be a number"))
        return None
    if price < 0 or price > MAX_PRICE:
        errors.append(RowError(index, "price", "invalid", f"must be between 0 and {MAX_PRICE}"))
        return None
    return price


def user_parse(row: Any, *, index: int, external_id: Any = None) -> tuple[UserIn | None, list]:
    if not isinstance(row, dict):
        return None, [RowError(index, None, "invalid", "must be an object")]
    raw_id, errors = _row_id(row, USER_FIELDS, index, external_id)
    attributes = _attributes(row.get("attributes"), index, errors)
    if errors:
        return None, errors
    return UserIn(external_id=str(raw_id), attributes=attributes), []
