"""Catalog HTTP API: items and users. Parse, call one service or selector, serialise."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.system import scopes
from core.system.exceptions import PayloadTooLarge

from . import schema, selectors, services
from .models import Item, User
from .validation import RowError, item_parse, user_parse

MAX_PAGE = 1000


def item_output(item: Item) -> dict[str, Any]:
    return {
        "id": item.external_id,
        "title": item.title,
        "category": item.category,
        "tags": item.tags,
        "price": float(item.price) if item.price is not None else None,
        "available": item.available,
        "attributes": item.attributes,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def user_output(user: User) -> dict[str, Any]:
    return {
        "id": user.external_id,
        "attributes": user.attributes,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def _invalid(errors: list[RowError]) -> exceptions.ValidationError:
    return exceptions.ValidationError({"errors": [error.as_dict() for error in errors]})


def _page_params(request: Request) -> tuple[str | None, int]:
    raw_limit = request.query_params.get("limit", "100")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise exceptions.ValidationError({"limit": [f"must be an integer from 1 to {MAX_PAGE}"]})
    return request.query_params.get("cursor") or None, limit


def _batch_rows(data: Any, key: str) -> list[Any]:
    rows = data.get(key) if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise exceptions.ValidationError(
            {key: [f"expected a non-empty list, or an object {{'{key}': [...]}}"]}
        )
    limit = settings.CATALOG_MAX_BATCH
    if len(rows) > limit:
        raise PayloadTooLarge(f"A batch holds at most {limit} rows; got {len(rows)}.")
    return rows


def _batch_answer(result: services.UpsertResult, errors: list[RowError], rejected: int) -> Response:
    return Response(
        {
            "created": result.created,
            "updated": result.updated,
            "rejected": rejected,
            "errors": [error.as_dict() for error in errors],
        },
        status=status.HTTP_200_OK,
    )


class ItemListApi(APIView):
    """GET /items?category=a/b&available=true&cursor=...&limit=100"""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(
        operation_id="items_list",
        parameters=[
            *schema.PAGE_PARAMETERS,
            OpenApiParameter("category", str, description="a category path: node and subtree"),
            OpenApiParameter("available", bool),
        ],
        responses=schema.ItemPage,
    )
    def get(self, request: Request) -> Response:
        cursor, limit = _page_params(request)
        available_raw = request.query_params.get("available")
        available = None
        if available_raw is not None:
            if available_raw.lower() not in ("true", "false", "1", "0"):
                raise exceptions.ValidationError({"available": ["must be true or false"]})
            available = available_raw.lower() in ("true", "1")
        try:
            page = selectors.item_list(
                category=request.query_params.get("category") or None,
                available=available,
                cursor=cursor,
                limit=limit,
            )
        except selectors.InvalidCursor as exc:
            raise exceptions.ValidationError({"cursor": [str(exc)]}) from exc
        return Response(
            {
                "results": [item_output(item) for item in page.results],
                "next_cursor": page.next_cursor,
            }
        )


class ItemBatchUpsertApi(APIView):
    """POST /items/batch: up to CATALOG_MAX_BATCH items; valid rows are stored, bad ones listed."""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(request=schema.ItemBody(many=True), responses=schema.BatchResult)
    def post(self, request: Request) -> Response:
        rows = _batch_rows(request.data, "items")
        items, errors = [], []
        for index, row in enumerate(rows):
            item, row_errors = item_parse(row, index=index)
            if item is None:
                errors.extend(row_errors)
            else:
                items.append(item)
        if not items:
            raise _invalid(errors)
        result = services.items_upsert(items=items)
        return _batch_answer(result, errors, rejected=len(rows) - len(items))


class ItemDetailApi(APIView):
    """PUT (create or replace), GET, DELETE /items/{id}."""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(responses=schema.Item)
    def get(self, request: Request, external_id: str) -> Response:
        item = selectors.item_get(external_id=external_id)
        if item is None:
            raise exceptions.NotFound(f"No item {external_id!r}.")
        return Response(item_output(item))

    @extend_schema(request=schema.ItemBody, responses={200: schema.Item, 201: schema.Item})
    def put(self, request: Request, external_id: str) -> Response:
        item_in, errors = item_parse(request.data, index=0, external_id=external_id)
        if item_in is None:
            raise _invalid(errors)
        item, created = services.item_upsert(item=item_in)
        return Response(
            item_output(item), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(responses={204: None})
    def delete(self, request: Request, external_id: str) -> Response:
        if not services.item_delete(external_id=external_id):
            raise exceptions.NotFound(f"No item {external_id!r}.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserListApi(APIView):
    """GET /users?cursor=...&limit=100"""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(
        operation_id="users_list", parameters=schema.PAGE_PARAMETERS, responses=schema.UserPage
    )
    def get(self, request: Request) -> Response:
        cursor, limit = _page_params(request)
        try:
            page = selectors.user_list(cursor=cursor, limit=limit)
        except selectors.InvalidCursor as exc:
            raise exceptions.ValidationError({"cursor": [str(exc)]}) from exc
        return Response(
            {
                "results": [user_output(user) for user in page.results],
                "next_cursor": page.next_cursor,
            }
        )


class UserBatchUpsertApi(APIView):
    """POST /users/batch: up to CATALOG_MAX_BATCH users."""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(request=schema.UserBody(many=True), responses=schema.BatchResult)
    def post(self, request: Request) -> Response:
        rows = _batch_rows(request.data, "users")
        users, errors = [], []
        for index, row in enumerate(rows):
            user, row_errors = user_parse(row, index=index)
            if user is None:
                errors.extend(row_errors)
            else:
                users.append(user)
        if not users:
            raise _invalid(errors)
        result = services.users_upsert(users=users)
        return _batch_answer(result, errors, rejected=len(rows) - len(users))


class UserDetailApi(APIView):
    """PUT, GET, DELETE /users/{id}. DELETE is the right to be forgotten."""

    required_scope = scopes.CATALOG_WRITE

    @extend_schema(responses=schema.User)
    def get(self, request: Request, external_id: str) -> Response:
        user = selectors.user_get(external_id=external_id)
        if user is None:
            raise exceptions.NotFound(f"No user {external_id!r}.")
        return Response(user_output(user))

    @extend_schema(request=schema.UserBody, responses={200: schema.User, 201: schema.User})
    def put(self, request: Request, external_id: str) -> Response:
        user_in, errors = user_parse(request.data, index=0, external_id=external_id)
        if user_in is None:
            raise _invalid(errors)
        user, created = services.user_upsert(user=user_in)
        return Response(
            user_output(user), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(responses=schema.ForgetReport)
    def delete(self, request: Request, external_id: str) -> Response:
        report = services.user_forget(external_id=external_id)
        if report is None:
            raise exceptions.NotFound(f"No user {external_id!r}.")
        return Response({"id": report.external_id, "removed": report.removed})
